"""Generate the synthetic product-review sample data in sample_data/.

The reviews are NOT real customer reviews: they are composed at random from
hand-written sentence pieces below (12 product categories, made-up product
names, positive / negative / mixed opinions about concrete aspects), with a
few quirks mixed in on purpose: typos, one-word reviews, long multi-paragraph
reviews, Spanish / German / French reviews, quotes and braces, emoji and
newlines inside the text.

Output (overwritten on every run, identical every time: fixed seed):

    reviews.jsonl        300 rows: id, product, category, stars, title, text, date
    reviews.parquet      the same rows
    reviews.csv          the same rows
    reviews_batch.jsonl  the first 40 rows as OpenAI Batch API request lines

Rerun from the repository root with:

    python sample_data/make_samples.py
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import polars as pl

SEED = 20250612
N_ROWS = 300
N_BATCH = 40
OUT_DIR = Path(__file__).resolve().parent

# --------------------------------------------------------------------------
# Hand-written pieces. Each aspect is (positive sentences, negative sentences).
# --------------------------------------------------------------------------

CATEGORIES: dict[str, dict] = {
    "headphones": {
        "products": ["Aurora ANC-700 Wireless Headphones", "Pulse Buds Mini", "Tessel Studio Over-Ear"],
        "aspects": {
            "battery life": (
                [
                    "Battery easily lasts a full work week of commuting.",
                    "I get around 30 hours per charge, close to what they advertise.",
                ],
                [
                    "Battery life dropped to maybe 4 hours after a month.",
                    "They die halfway through a long flight.",
                ],
            ),
            "noise cancelling": (
                [
                    "Noise cancelling is strong enough to block out the open-plan office.",
                    "On the train the ANC takes out almost all the rumble.",
                ],
                [
                    "The noise cancelling creates a weird pressure feeling and a faint hiss.",
                    "ANC barely does anything against voices.",
                ],
            ),
            "comfort": (
                [
                    "Comfortable even after a few hours, the ear pads are soft.",
                    "Light enough that I forget I'm wearing them.",
                ],
                [
                    "They squeeze my head and start to hurt after about an hour.",
                    "The earbuds keep falling out when I walk.",
                ],
            ),
            "connectivity": (
                [
                    "Pairing with my phone and laptop was painless.",
                    "Switching between two devices works really well.",
                ],
                [
                    "Bluetooth keeps dropping when my phone is in my back pocket.",
                    "There is a noticeable audio delay when watching videos.",
                ],
            ),
        },
    },
    "coffee grinder": {
        "products": ["Brewline Burr Grinder BG-2", "Millstone Hand Grinder", "GrindPro 40"],
        "aspects": {
            "grind consistency": (
                [
                    "Grind is very consistent, my pour-over finally tastes right.",
                    "Goes fine enough for espresso without clumping.",
                ],
                [
                    "Lots of fines and boulders even on the medium setting.",
                    "The coarse setting is still way too fine for French press.",
                ],
            ),
            "noise": (
                [
                    "Quieter than my old blade grinder by a mile.",
                    "I can grind at 6am without waking anyone up.",
                ],
                [
                    "It is LOUD, like a leaf blower in the kitchen.",
                    "Makes a high-pitched whine that sets my teeth on edge.",
                ],
            ),
            "cleaning": (
                [
                    "The burrs come out without tools, so cleaning takes two minutes.",
                    "Comes with a little brush and is easy to keep clean.",
                ],
                [
                    "Cleaning it is a pain, grounds get stuck everywhere.",
                    "You need a screwdriver just to get to the burrs.",
                ],
            ),
            "static": (
                [
                    "Hardly any static, the grounds drop straight into the cup.",
                    "No mess on the counter after grinding.",
                ],
                [
                    "Static sends coffee all over the counter.",
                    "Grounds cling to the chute and the catch cup.",
                ],
            ),
        },
    },
    "running shoes": {
        "products": ["Stride Runner 5", "TrailKite GTX", "Velo Lite Trainer"],
        "aspects": {
            "fit": (
                [
                    "True to size and the toe box has plenty of room.",
                    "Fit perfectly out of the box, no break-in needed.",
                ],
                ["They run at least half a size small.", "The heel slips no matter how I lace them."],
            ),
            "cushioning": (
                [
                    "Cushioning is soft but still feels responsive on tempo runs.",
                    "My knees feel better after long runs in these.",
                ],
                ["The foam felt flat after about 150 km.", "Way too firm for anything longer than a 5k."],
            ),
            "durability": (
                [
                    "Over 600 km on them and the outsole still looks good.",
                    "Survived a muddy winter of trail running.",
                ],
                [
                    "The upper ripped near the little toe within a month.",
                    "Sole started peeling off at the front after a few weeks.",
                ],
            ),
            "grip": (
                ["Grip on wet pavement is excellent.", "Lugs hold well on loose gravel and mud."],
                ["Slippery as ice on wet tiles.", "No grip at all on wet roots."],
            ),
        },
    },
    "phone case": {
        "products": ["ArmorShell Case for Pixel 9", "SlimGrip Case for iPhone 16", "ClearGuard MagSafe Case"],
        "aspects": {
            "fit": (
                ["Fits the phone snugly and all the cutouts line up.", "Clicks on tight, no wobble at all."],
                [
                    "The camera cutout is slightly off and covers part of the lens.",
                    "It is loose at the bottom corners.",
                ],
            ),
            "protection": (
                [
                    "Dropped my phone on concrete twice, not a scratch.",
                    "The raised lip actually protects the screen when it lands face down.",
                ],
                [
                    "Phone screen cracked on the first drop from table height.",
                    "The corners offer basically no protection.",
                ],
            ),
            "clear finish": (
                ["Still crystal clear after two months.", "Looks great and shows off the phone color."],
                ["Turned yellow within three weeks.", "Picks up fingerprints and lint like crazy."],
            ),
            "buttons": (
                [
                    "Buttons are clicky and easy to press.",
                    "MagSafe charger snaps on firmly through the case.",
                ],
                ["The volume buttons are really stiff.", "The magnet is too weak to hold my car mount."],
            ),
        },
    },
    "desk lamp": {
        "products": ["Lumo Arc LED Desk Lamp", "Halden Architect Lamp", "BrightNook Clamp Lamp"],
        "aspects": {
            "brightness": (
                [
                    "Bright enough to light my whole desk evenly.",
                    "Five brightness levels and the lowest one is great for night reading.",
                ],
                ["Even on max it is pretty dim.", "The light is concentrated in a small harsh spot."],
            ),
            "color temperature": (
                [
                    "The warm setting is really cozy in the evening.",
                    "Color temperature is adjustable and looks natural.",
                ],
                ["The cool white is bluish and hard on the eyes.", "Warm mode looks orange, not warm white."],
            ),
            "flicker": (
                [
                    "No flicker at all, even on camera during video calls.",
                    "My eyes feel much less tired than with my old lamp.",
                ],
                ["Flickers on the lowest setting.", "There is a visible strobe when I film with my phone."],
            ),
            "stability": (
                ["The arm stays exactly where I put it.", "Heavy base, doesn't tip over."],
                [
                    "The arm slowly droops down during the day.",
                    "The clamp doesn't fit my desk, which is only 4 cm thick.",
                ],
            ),
        },
    },
    "backpack": {
        "products": ["Northway 28L Commuter Pack", "Fieldday Rolltop", "Kestrel Laptop Backpack"],
        "aspects": {
            "capacity": (
                [
                    "Fits a 16-inch laptop, gym clothes and lunch with room to spare.",
                    "Lots of smart pockets, everything has its place.",
                ],
                [
                    "Smaller inside than it looks in the photos.",
                    "The laptop sleeve is too tight for a 15-inch laptop.",
                ],
            ),
            "zippers": (
                [
                    "Zippers are chunky and run smoothly.",
                    "Sturdy YKK zippers, feels like it will last years.",
                ],
                ["The main zipper broke after five weeks.", "Zippers snag on the fabric constantly."],
            ),
            "straps": (
                [
                    "Straps are well padded, comfortable even fully loaded.",
                    "The chest strap really helps on the bike.",
                ],
                [
                    "Shoulder straps dig in once there's any weight in it.",
                    "One strap started fraying at the seam.",
                ],
            ),
            "waterproofing": (
                [
                    "Got caught in a downpour and everything inside stayed dry.",
                    "Water just beads off the fabric.",
                ],
                [
                    "Not waterproof at all, my notebook got soaked.",
                    "Water gets in through the zipper in light rain.",
                ],
            ),
        },
    },
    "blender": {
        "products": ["VortexMax 1200", "Blendly Personal Blender", "Kitchora Pro Blender"],
        "aspects": {
            "power": (
                [
                    "Crushes ice and frozen fruit without any trouble.",
                    "Makes silky smoothies in under a minute.",
                ],
                [
                    "Struggles with frozen fruit, I have to stop and stir constantly.",
                    "Leaves chunks of kale even after two minutes.",
                ],
            ),
            "noise": (
                [
                    "Surprisingly quiet for a blender this powerful.",
                    "Loud, but no worse than any other blender.",
                ],
                ["So loud my dog leaves the room.", "Smells like burning motor after a minute of use."],
            ),
            "jar and lid": (
                [
                    "The lid seals tight, no leaks.",
                    "The jar feels sturdy and the measurements are easy to read.",
                ],
                [
                    "The lid leaks if you fill it past halfway.",
                    "The jar cracked near the base after a few weeks.",
                ],
            ),
            "cleaning": (
                [
                    "Cleaning is just warm water, a drop of soap and a 30 second run.",
                    "Jar and blade are dishwasher safe.",
                ],
                [
                    "Gunk gets trapped under the blade assembly.",
                    "The jar is cloudy after a couple of dishwasher cycles.",
                ],
            ),
        },
    },
    "e-reader": {
        "products": ["Pagebright 7 E-Reader", "Inkwell Glow", "Folio Mini"],
        "aspects": {
            "screen": (
                [
                    "The screen is sharp and easy to read even in direct sun.",
                    "The warm front light is perfect for reading in bed.",
                ],
                [
                    "The front light is uneven, with a shadow at the bottom edge.",
                    "Page turns leave visible ghosting.",
                ],
            ),
            "battery life": (
                ["Battery lasts weeks with daily reading.", "Charged it once on holiday, that was it."],
                ["Battery drains in a few days even with wifi off.", "Loses charge sitting in a drawer."],
            ),
            "software": (
                [
                    "Syncing with my library and sideloading EPUBs both work well.",
                    "The menus are simple and fast.",
                ],
                [
                    "The software is sluggish and crashes when I search.",
                    "Sync between devices loses my place constantly.",
                ],
            ),
            "size and weight": (
                ["Light enough to hold with one hand for hours.", "Fits in my jacket pocket."],
                ["A bit heavy for one-handed reading.", "The bezels make it bigger than it needs to be."],
            ),
        },
    },
    "yoga mat": {
        "products": ["Groundwell 6mm Yoga Mat", "Asana Cork Mat", "FlowGrip Travel Mat"],
        "aspects": {
            "grip": (
                ["Grippy even when my hands get sweaty in hot yoga.", "No slipping in downward dog."],
                [
                    "Slippery until you sweat on it, then it's even worse.",
                    "My hands slide forward in every plank.",
                ],
            ),
            "thickness": (
                [
                    "Thick enough that my knees don't hurt on hard floors.",
                    "Good cushioning without feeling wobbly in balance poses.",
                ],
                ["Too thin, my knees hurt on the wooden floor.", "So squishy it's hard to balance."],
            ),
            "smell": (
                ["No chemical smell out of the box.", "Smells faintly of cork, which I like."],
                [
                    "Strong rubber smell that hasn't gone away after two weeks.",
                    "My whole living room smelled like tires.",
                ],
            ),
            "durability": (
                [
                    "Used almost daily for six months, still looks new.",
                    "No peeling or dents after lots of use.",
                ],
                ["The top layer started flaking off after a month.", "Permanent dents where my heels go."],
            ),
        },
    },
    "kettle": {
        "products": ["Steepwell Gooseneck Kettle", "QuickBoil 1.7L", "Halden Variable-Temp Kettle"],
        "aspects": {
            "boil speed": (
                [
                    "Boils a full kettle in about three minutes.",
                    "Fast enough that I don't bother with the stovetop anymore.",
                ],
                ["Takes forever to boil.", "Sometimes switches off before the water actually boils."],
            ),
            "temperature control": (
                [
                    "The temperature presets are accurate, great for green tea.",
                    "Keep-warm mode holds the temperature for a good half hour.",
                ],
                [
                    "The set temperature is off by almost 10 degrees.",
                    "The keep-warm function turns itself off after a few minutes.",
                ],
            ),
            "taste": (
                ["No plastic taste, the water tastes clean.", "All steel inside, water tastes like water."],
                [
                    "Water had a plastic taste even after boiling and dumping ten times.",
                    "Limescale builds up really fast on the element.",
                ],
            ),
            "lid and spout": (
                [
                    "The gooseneck pours a nice slow, controlled stream.",
                    "The lid opens smoothly and doesn't splash.",
                ],
                [
                    "The lid pops open while it's boiling.",
                    "Dribbles from the spout onto the counter every time.",
                ],
            ),
        },
    },
    "office chair": {
        "products": ["Ergonest Mesh Chair", "Bureau Task Chair", "Summit Pro Executive Chair"],
        "aspects": {
            "lumbar support": (
                [
                    "The lumbar support actually fits the curve of my back.",
                    "My lower back pain is gone after a month in this chair.",
                ],
                [
                    "The lumbar support pushes into the wrong spot and can't be adjusted.",
                    "My back hurts more than with my old chair.",
                ],
            ),
            "assembly": (
                [
                    "Assembled in 15 minutes, the instructions are clear.",
                    "All parts were labeled and the tools were included.",
                ],
                [
                    "Assembly took over an hour and two holes didn't line up.",
                    "Some screws were missing from the bag.",
                ],
            ),
            "armrests": (
                ["The armrests adjust in every direction.", "Padded armrests, nice on the elbows."],
                [
                    "The armrests wobble and can't be tightened.",
                    "Armrests are too high even at the lowest setting.",
                ],
            ),
            "build quality": (
                ["Solid build, no squeaks or creaks.", "Feels much more expensive than it was."],
                ["Squeaks every time I lean back.", "The gas lift slowly sinks during the day."],
            ),
        },
    },
    "board game": {
        "products": ["Harbor Lights", "Dungeon Couriers", "Tiny Orchards"],
        "aspects": {
            "rules": (
                [
                    "Rules are easy to teach, we were playing within ten minutes.",
                    "The rulebook has lots of examples and a good quick reference.",
                ],
                [
                    "The rulebook is confusing and we had to look up videos.",
                    "Several rules contradict each other.",
                ],
            ),
            "components": (
                [
                    "The wooden pieces and the art are lovely.",
                    "Thick cardboard tiles and nice linen-finish cards.",
                ],
                [
                    "The cards are thin and started bending after a few plays.",
                    "One of the punchboards was misprinted.",
                ],
            ),
            "replayability": (
                [
                    "Every game plays out differently, we keep coming back to it.",
                    "The variable setup keeps it fresh after twenty plays.",
                ],
                [
                    "After three games it felt like we'd seen everything.",
                    "The same strategy wins every time.",
                ],
            ),
            "player count": (
                [
                    "Works just as well with two players as with five.",
                    "Great with the whole family, kids included.",
                ],
                ["It really doesn't work with two players.", "Way too much downtime with four or more."],
            ),
        },
    },
}

# Aspects any product can have.
COMMON_ASPECTS: dict[str, tuple[list[str], list[str]]] = {
    "delivery": (
        ["Arrived two days early and well packed.", "Delivery was quick, no complaints."],
        ["Took almost three weeks to arrive.", "The box showed up crushed with one corner dented."],
    ),
    "customer service": (
        [
            "Customer service replaced a faulty part without any fuss.",
            "Support answered my email within a few hours.",
        ],
        [
            "Customer service kept sending me the same copy-paste answer.",
            "Tried to contact support twice and never heard back.",
        ],
    ),
    "price": (
        ["Honestly great value for the price.", "Got it on sale, and at that price it's a steal."],
        ["Way overpriced for what you get.", "For this money I expected much better quality."],
    ),
}

OPENERS = [
    "Bought the PRODUCT last month.",
    "I've been using the PRODUCT for about three weeks now.",
    "Got the PRODUCT as a gift for my partner.",
    "Ordered the PRODUCT to replace one that finally died.",
    "Picked up the PRODUCT after reading a lot of reviews.",
    "Second PRODUCT I've owned.",
]

CLOSERS = {
    "positive": [
        "Would buy again.",
        "Highly recommend.",
        "Very happy with this purchase.",
        "No regrets.",
        "Already ordered a second one.",
    ],
    "negative": [
        "Returning it.",
        "Would not recommend.",
        "Save your money.",
        "Very disappointed.",
        "I want a refund.",
    ],
    "mixed": [
        "Not sure I'd buy it again.",
        "Okay for the price, but I expected more.",
        "It does the job, mostly.",
        "Keeping it for now.",
    ],
}

TITLES = {
    "positive": [
        "Exactly what I needed",
        "Great value",
        "Very happy",
        "Does what it says",
        "Better than expected",
        "Love it",
        "Solid purchase",
        "Highly recommend",
        "Worth every penny",
    ],
    "negative": [
        "Disappointed",
        "Returned it",
        "Not as advertised",
        "Stopped working",
        "Waste of money",
        "Would not buy again",
        "Poor quality",
        "Avoid",
    ],
    "mixed": [
        "Good but not great",
        "Decent, with caveats",
        "Mixed feelings",
        "Okay for the price",
        "Almost there",
        "Some pros, some cons",
        "Fine, not amazing",
    ],
}

# (text, sentiment) for one-liners.
SHORT_REVIEWS = [
    ("Great!", "positive"),
    ("Perfect.", "positive"),
    ("Does the job.", "positive"),
    ("Love it 😍", "positive"),
    ("Works as described", "positive"),
    ("Junk.", "negative"),
    ("Broke after a week.", "negative"),
    ("Not worth it.", "negative"),
    ("Meh.", "mixed"),
    ("ok", "mixed"),
    ("Fine I guess", "mixed"),
]

# Sentences with quotes and braces in them (tests escaping in JSON / CSV / prompts).
QUIRKY_SENTENCES = {
    "positive": [
        'My kid calls it "the good one" and hides it from her brother.',
        'The seller added a handwritten note saying "Enjoy!" which was a nice touch.',
        'Ten out of ten, would "add to cart" again.',
    ],
    "negative": [
        'The listing said "waterproof" but it is "splash-resistant" at best.',
        'The QR code on the box opens a page that just shows {"status": "not found"}.',
        'Support replied with a template that literally started "Dear {customer_name},".',
    ],
    "mixed": [
        "Works fine, but the manual has placeholders like {MODEL} and {VOLTAGE} printed in it.",
        'The box says "premium quality" {sic}, I would say "average".',
        'It is "good enough", as my dad would say.',
    ],
}

EMOJI = {
    "positive": ["👍", "😍", "🔥", "⭐⭐⭐⭐⭐", "🙌"],
    "negative": ["👎", "😡", "🤦", "💸"],
    "mixed": ["🤷", "😐", "🙂"],
}

# Hand-written non-English reviews: (category, sentiment, title, text).
FOREIGN_REVIEWS = [
    (
        "headphones",
        "positive",
        "Muy recomendables",
        "Muy buena calidad de sonido y la batería dura bastante. Llegaron antes de lo previsto.",
    ),
    (
        "kettle",
        "negative",
        "No lo compren",
        "El hervidor dejó de funcionar a las dos semanas y el servicio al cliente no respondió.",
    ),
    (
        "yoga mat",
        "mixed",
        "Bien, pero huele",
        "La esterilla agarra bien, pero el olor a plástico tardó días en irse.",
    ),
    (
        "office chair",
        "positive",
        "Endlich keine Rückenschmerzen",
        "Sehr bequem, auch nach acht Stunden am Schreibtisch. Der Aufbau hat etwa 20 Minuten gedauert.",
    ),
    (
        "running shoes",
        "negative",
        "Leider enttäuschend",
        "Die Schuhe fallen mindestens eine Nummer kleiner aus und die Sohle löst sich schon nach 100 km.",
    ),
    (
        "blender",
        "mixed",
        "Stark, aber laut",
        "Mixt Smoothies in Sekunden, ist aber unglaublich laut. Der Deckel sitzt etwas locker.",
    ),
    (
        "e-reader",
        "positive",
        "Parfait pour lire au lit",
        "Écran très lisible, même en plein soleil. La batterie tient plusieurs semaines.",
    ),
    (
        "backpack",
        "negative",
        "Qualité décevante",
        "La fermeture éclair a cassé au bout d'un mois. Déçu pour ce prix.",
    ),
    (
        "coffee grinder",
        "mixed",
        "Bon moulin, entretien pénible",
        "Mouture régulière pour l'espresso, mais le nettoyage est pénible "
        "et il y a beaucoup d'électricité statique.",
    ),
]

# Stars people give for each opinion; noisy on purpose (a 3-star "positive" etc.).
STARS = {
    "positive": [5, 5, 5, 5, 4, 4, 4, 3],
    "negative": [1, 1, 1, 2, 2, 2, 3],
    "mixed": [3, 3, 3, 2, 4, 4, 2],
}

# How many rows get each quirk (rows are picked at random, see build_rows).
N_FOREIGN = len(FOREIGN_REVIEWS)  # 9 rows = 3%
N_SHORT = 12
N_LONG = 45
N_TYPOS = 15
N_QUIRKY = 12
N_EMOJI = 18
N_NEWLINES = 12
N_MISCLICK = 4  # stars that don't match the text at all

# --------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------


def add_typos(rng: random.Random, text: str, product: str) -> str:
    """Swap two neighbouring letters in one or two longer words, like a fast typist."""
    words = text.split(" ")
    keep = set(product.split())  # people copy-paste product names, they don't mistype them
    candidates = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha() and w not in keep]
    for i in rng.sample(candidates, k=min(len(candidates), rng.choice([1, 2]))):
        w = words[i]
        j = rng.randrange(1, len(w) - 2)
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    text = " ".join(words)
    if rng.random() < 0.3:
        text = text.lower()
    return text


def compose_review(
    rng: random.Random, category: str, product: str, sentiment: str, long: bool
) -> tuple[str, list[str]]:
    """Return (title, sentences) for one review."""
    aspects = {**CATEGORIES[category]["aspects"], **COMMON_ASPECTS}
    own = list(CATEGORIES[category]["aspects"])
    n_aspects = rng.randint(2, 3) if long else rng.randint(1, 2)
    picked = rng.sample(own, k=min(n_aspects, len(own)))
    if rng.random() < 0.35:
        picked.append(rng.choice(list(COMMON_ASPECTS)))

    sentences: list[str] = []
    if long or rng.random() < 0.4:
        sentences.append(rng.choice(OPENERS).replace("PRODUCT", product))

    if sentiment == "mixed":
        # At least one good and one bad aspect.
        polarity = [True, False] + [rng.random() < 0.5 for _ in picked[2:]]
        rng.shuffle(polarity)
        if len(picked) == 1:
            picked.append(rng.choice([a for a in own if a != picked[0]]))
    else:
        polarity = [sentiment == "positive"] * len(picked)

    for aspect, good in zip(picked, polarity, strict=True):
        pos, neg = aspects[aspect]
        sentences.append(rng.choice(pos if good else neg))

    if long or rng.random() < 0.5:
        sentences.append(rng.choice(CLOSERS[sentiment]))

    # Title: usually generic, sometimes about the aspects.
    if sentiment == "mixed" and rng.random() < 0.4:
        good = picked[polarity.index(True)]
        bad = picked[polarity.index(False)]
        title = f"{good.capitalize()} good, {bad} not so much"
    elif sentiment == "positive" and rng.random() < 0.25:
        title = f"{picked[0].capitalize()}: no complaints"
    elif sentiment == "negative" and rng.random() < 0.25:
        title = rng.choice([f"Problems with the {picked[0]}", f"Disappointed by the {picked[0]}"])
    else:
        title = rng.choice(TITLES[sentiment])
    return title, sentences


def build_rows(rng: random.Random) -> list[dict]:
    indices = list(range(N_ROWS))
    rng.shuffle(indices)
    # Disjoint groups: foreign and short rows get no other quirks; long rows get newlines.
    foreign = dict(zip(indices[:N_FOREIGN], FOREIGN_REVIEWS, strict=True))
    short = set(indices[N_FOREIGN : N_FOREIGN + N_SHORT])
    rest = indices[N_FOREIGN + N_SHORT :]
    long_rows = set(rest[:N_LONG])
    newline_rows = set(rest[:N_NEWLINES])  # a subset of the long rows
    typo_rows = set(rng.sample(rest, N_TYPOS))
    quirky_rows = set(rng.sample(rest, N_QUIRKY))
    emoji_rows = set(rng.sample(rest, N_EMOJI))
    misclick_rows = set(rng.sample(rest, N_MISCLICK))

    start = dt.date(2025, 1, 1)
    rows = []
    for i in range(N_ROWS):
        if i in foreign:
            category, sentiment, title, text = foreign[i]
            product = rng.choice(CATEGORIES[category]["products"])
        else:
            category = rng.choice(list(CATEGORIES))
            product = rng.choice(CATEGORIES[category]["products"])
            if i in short:
                text, sentiment = rng.choice(SHORT_REVIEWS)
                title = rng.choice(TITLES[sentiment])
            else:
                sentiment = rng.choices(["positive", "negative", "mixed"], weights=[5, 3, 2])[0]
                title, sentences = compose_review(rng, category, product, sentiment, i in long_rows)
                if i in quirky_rows:
                    sentences.insert(rng.randint(1, len(sentences)), rng.choice(QUIRKY_SENTENCES[sentiment]))
                if i in newline_rows:
                    cut = rng.randint(1, len(sentences) - 1)
                    sep = rng.choice(["\n", "\n\n"])
                    text = " ".join(sentences[:cut]) + sep + " ".join(sentences[cut:])
                else:
                    text = " ".join(sentences)
                if i in typo_rows:
                    text = add_typos(rng, text, product)
                if i in emoji_rows:
                    text += " " + rng.choice(EMOJI[sentiment])

        stars = rng.randint(1, 5) if i in misclick_rows else rng.choice(STARS[sentiment])
        date = start + dt.timedelta(days=rng.randrange(0, 304))  # Jan 1 .. Oct 31
        rows.append(
            {
                "product": product,
                "category": category,
                "stars": stars,
                "title": title,
                "text": text,
                "date": date.isoformat(),
            }
        )

    # Export order: by date, then ids in that order.
    rows.sort(key=lambda r: r["date"])
    return [{"id": f"r{n:04d}", **r} for n, r in enumerate(rows, start=1)]


def batch_lines(rng: random.Random, rows: list[dict]) -> list[dict]:
    """OpenAI Batch API input lines; a few bodies differ like they do in real files."""
    picks = rng.sample(range(len(rows)), 5)
    no_temperature, longer_answer = set(picks[:3]), set(picks[3:])
    lines = []
    for i, row in enumerate(rows):
        body: dict = {
            "model": "qwen3-max",
            "messages": [
                {"role": "system", "content": "You label the sentiment of product reviews."},
                {
                    "role": "user",
                    "content": f"Review: {row['title']}. {row['text']}\n"
                    "Answer with one word: positive, negative or mixed.",
                },
            ],
            "max_tokens": 16 if i in longer_answer else 8,
            "temperature": 0,
        }
        if i in no_temperature:
            del body["temperature"]
        lines.append({"custom_id": row["id"], "method": "POST", "url": "/v1/chat/completions", "body": body})
    return lines


def main() -> None:
    rng = random.Random(SEED)
    rows = build_rows(rng)
    df = pl.DataFrame(
        rows,
        schema={
            "id": pl.String,
            "product": pl.String,
            "category": pl.String,
            "stars": pl.Int64,
            "title": pl.String,
            "text": pl.String,
            "date": pl.String,
        },
    )

    with open(OUT_DIR / "reviews.jsonl", "w", encoding="utf-8") as f:
        for row in df.iter_rows(named=True):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    df.write_parquet(OUT_DIR / "reviews.parquet")
    df.write_csv(OUT_DIR / "reviews.csv")

    with open(OUT_DIR / "reviews_batch.jsonl", "w", encoding="utf-8") as f:
        for line in batch_lines(rng, rows[:N_BATCH]):
            f.write(json.dumps(line, ensure_ascii=False) + "\n")

    print(f"wrote {len(df)} reviews and {N_BATCH} batch lines to {OUT_DIR}")


if __name__ == "__main__":
    main()
