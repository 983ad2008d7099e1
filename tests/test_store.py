"""The run store: journal lines in, the output assembled from input parts and the latest answers."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from batchrun.records import OUTPUT_COLUMNS, Result
from batchrun.store import journal, output_writer
from batchrun.store import runstore as store
from batchrun.store.runstore import RunStore, result_schema


def _finished(run: RunStore, rows: int) -> list[str]:
    """Which of the test store's ids `finished_ids` holds."""
    ids = [f"id-{i:05d}" for i in range(rows)]
    return [i for i, done in zip(ids, run.finished_ids().contains(ids), strict=True) if done]


def _store(output: Path, rows: int) -> RunStore:
    """A store whose input has `rows` rows, in two parts, with an awkward column name."""
    run = RunStore(output)
    run.open()
    ids = [f"id-{i:05d}" for i in range(rows)]
    half = rows // 2
    frame = pl.DataFrame({'it\'s "text"': [f"row {i}" for i in range(rows)], "custom_id": ids})
    run.write_input(frame.slice(0, half))
    run.write_input(frame.slice(half))
    return run


def test_the_latest_answer_per_row_wins_and_rows_keep_input_order(tmp_path: Path) -> None:
    output = tmp_path / "it's here?" / "out.parquet"  # quotes and a `?` (a URI to DuckDB) in the path
    run = _store(output, 6)
    # Answers arrive out of order; row 2 first fails retryably, then succeeds; row 5 never answers.
    run.write_results([Result("id-00003", "ok", completion="three", prompt_tokens=7, cost_usd=0.5)])
    run.write_results([Result("id-00002", "error", error_type="rate_limited", retryable=True)])
    run.write_results([Result(f"id-{i:05d}", "ok", completion=f"c{i}", attempts=1) for i in (4, 0, 1)])
    run.write_results([Result("id-00002", "ok", completion="two at last", attempts=2)])
    run.close()

    out = pl.read_parquet(run.assemble())

    assert out.columns == ['it\'s "text"', "custom_id", *(c for c in OUTPUT_COLUMNS if c != "custom_id")]
    assert out["custom_id"].to_list() == [f"id-{i:05d}" for i in range(6)]
    assert out["completion"].to_list() == ["c0", "c1", "two at last", "three", "c4", None]
    assert out["status"].to_list() == ["ok"] * 5 + ["pending"]
    assert out["error_type"][2] is None
    assert out["attempts"][2] == 2
    assert out["prompt_tokens"][3] == 7
    schema = result_schema()
    assert {name: out.schema[name] for name in OUTPUT_COLUMNS} == {
        name: schema[name] for name in OUTPUT_COLUMNS
    }
    assert not list(output.parent.glob(".*.tmp")), "no temporary file left beside the output"


def test_a_join_larger_than_the_memory_cap_raises_the_cap_and_still_assembles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = 20_000
    run = _store(tmp_path / "out.parquet", rows)
    run.write_results(
        [Result(f"id-{i:05d}", "ok", completion=f"answer {i} " + "x" * 200) for i in reversed(range(rows))]
    )
    run.close()
    caps: list[int] = []
    join = RunStore._assemble

    def recording_join(self: RunStore, inputs: list[Path], tmp: Path, memory_mb: int) -> store.Assembly:
        caps.append(memory_mb)
        return join(self, inputs, tmp, memory_mb)

    monkeypatch.setattr(RunStore, "_assemble", recording_join)
    monkeypatch.setattr(store, "ASSEMBLE_MEMORY_MB", 1)  # too small for DuckDB to even start the join

    out = pl.read_parquet(run.assemble())

    assert len(caps) > 1, "the cap was raised after running out of memory"
    assert caps == sorted(caps)
    assert out.height == rows
    assert out["custom_id"].to_list() == [f"id-{i:05d}" for i in range(rows)]
    assert out["completion"].str.starts_with("answer ").all()
    assert out["completion"][123].startswith("answer 123 ")


def test_an_empty_journal_gives_every_row_pending(tmp_path: Path) -> None:
    """Rows nobody answered yet are in the output, `pending`, their result columns null."""
    run = _store(tmp_path / "out.parquet", 3)
    run.close()

    out = pl.read_parquet(run.assemble())

    assert out.height == 3
    assert out["status"].to_list() == ["pending"] * 3
    assert out["completion"].null_count() == 3
    assert out.schema["cost_usd"] == pl.Float64


def test_files_left_by_an_assembly_killed_midway_are_cleared_on_open(tmp_path: Path) -> None:
    run = _store(tmp_path / "out.parquet", 4)
    run.close()
    (run.dir / "assemble.tmp").mkdir()
    (run.dir / "assemble.tmp" / "spill.block").write_bytes(b"x")

    again = _store(tmp_path / "out.parquet", 4)
    again.close()

    assert not (again.dir / "assemble.tmp").exists()
    assert pl.read_parquet(again.assemble()).height == 4


def test_resume_reads_the_latest_line_per_row(tmp_path: Path) -> None:
    """Finished rows and the money spent come from each row's latest journal line, a final line counting
    over any retryable one (lines from several machines meet in a journal kept on an object store)."""
    run = _store(tmp_path / "out.parquet", 4)
    assert len(run.finished_ids()) == 0
    assert run.spent_usd() == 0.0
    run.write_results([Result("id-00000", "error", error_type="rate_limited", retryable=True)])
    run.write_results([Result("id-00000", "ok", cost_usd=0.25), Result("id-00001", "ok", cost_usd=0.5)])
    run.write_results([Result("id-00002", "error", error_type="bad_request", cost_usd=0.125)])
    run.write_results([Result("id-00003", "ok", cost_usd=1.0)])
    run.write_results([Result("id-00003", "error", error_type="server_error", retryable=True)])
    run.close()
    assert _finished(run, 4) == ["id-00000", "id-00001", "id-00002", "id-00003"]
    assert run.spent_usd() == pytest.approx(1.875)
    output = pl.read_parquet(run.assemble())
    assert output.filter(pl.col("custom_id") == "id-00003")["status"].to_list() == ["ok"]


def test_input_pieces_are_gathered_into_parts_per_variant_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small pieces wait until INPUT_PART_ROWS rows have come, then go to one file per part prefix."""
    monkeypatch.setattr(store, "INPUT_PART_ROWS", 8)
    run = RunStore(tmp_path / "out.parquet")
    run.open()
    for start in range(0, 6, 2):  # two variants' pieces interleave, as a sweep renders them
        for variant in ("v0001-", "v0000-"):
            ids = [f"{variant}{i}" for i in range(start, start + 2)]
            run.write_input(pl.DataFrame({"text": ids, "custom_id": ids}), variant)
    written = sorted(p.name for p in run.dir.glob("input-*.parquet"))
    # Eight rows had come after the second round: one file per variant; the third round still waits.
    assert written == ["input-v0000-000002.parquet", "input-v0001-000001.parquet"]
    run.close()
    out = pl.read_parquet(run.assemble())
    assert len(list(run.dir.glob("input-*.parquet"))) == 4
    variant_major = [f"v000{v}-{i}" for v in (0, 1) for i in range(6)]
    assert out["custom_id"].to_list() == variant_major


def test_a_result_orjson_refuses_is_still_journaled(tmp_path: Path) -> None:
    """A lone surrogate in a completion (JSON allows the escape) must not cost the answer."""
    run = _store(tmp_path / "out.parquet", 2)
    lone_surrogate = Result("id-00000", "ok", completion="x\ud83d")
    run.write_results([lone_surrogate, Result("id-00001", "ok", completion="y")])
    run.close()
    out = pl.read_parquet(run.assemble())
    assert out["completion"].to_list() == ["x?", "y"]


def test_lines_longer_than_a_read_block_are_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal is read in blocks; a line spanning several blocks still comes back whole."""
    monkeypatch.setattr(journal, "BLOCK_BYTES", 64)
    run = _store(tmp_path / "out.parquet", 4)
    run.write_results([Result(f"id-{i:05d}", "ok", completion=f"{i}" * 300) for i in (2, 0, 3, 1)])
    run.close()

    out = pl.read_parquet(run.assemble())

    assert out["completion"].to_list() == [f"{i}" * 300 for i in range(4)]
    assert _finished(run, 4) == [f"id-{i:05d}" for i in range(4)]


def test_a_line_with_a_field_of_the_wrong_type_keeps_the_rest_of_its_answer(tmp_path: Path) -> None:
    """A readable line whose `prompt_tokens` is not a number: that field is null, the completion is kept."""
    run = _store(tmp_path / "out.parquet", 2)
    run.write_results([Result("id-00000", "ok", completion="zero", prompt_tokens=3)])
    run.close()
    with run.journal.open("ab") as f:
        f.write(b'{"custom_id": "id-00001", "status": "ok", "completion": "one", "prompt_tokens": "seven"}\n')

    out = pl.read_parquet(run.assemble())

    assert out["completion"].to_list() == ["zero", "one"]
    assert out["prompt_tokens"].to_list() == [3, None]


def test_unreadable_lines_are_skipped_with_a_warning_naming_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage, a non-object and a line without custom_id are skipped: their rows count as unanswered."""
    run = _store(tmp_path / "out.parquet", 4)
    run.write_results([Result("id-00000", "ok", completion="zero")])
    with run.journal.open("ab") as f:
        f.write(b'{"custom_id": "id-00001", "sta\x00\n[1, 2]\n{"status": "ok"}\n')
    run.write_results([Result("id-00003", "ok", completion="three")])
    run.close()

    assert _finished(run, 4) == ["id-00000", "id-00003"]
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        f"line {n} is not a readable result; skipped (its row is sent again)" for n in (2, 3, 4)
    ]
    assert pl.read_parquet(run.assemble())["status"].to_list() == ["ok", "pending", "pending", "ok"]


def test_finished_ids_tell_every_id_apart_even_when_digest_halves_agree() -> None:
    """Ids in and out of the set are told apart, in their own order; equal first halves are searched."""
    upper = pl.Series([1, 5, 5, 5, 9], dtype=pl.UInt64)
    lower = pl.Series([7, 1, 2, 3, 0], dtype=pl.UInt64)
    finished = store.FinishedIds(upper, lower)
    digests = {"a": (5, 2), "b": (5, 4), "c": (1, 7), "d": (0, 0), "e": (9, 0), "f": (10, 0)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "_md5_halves", digests.__getitem__)
        assert finished.contains(list("fabcde")) == [False, True, False, True, False, True]
    assert store.FinishedIds(upper.clear(), lower.clear()).contains(["a"]) == [False]


def test_digests_of_ids_agree_with_duckdb() -> None:
    """The digest halves a lookup computes are those DuckDB sorted the finished ids by."""
    import duckdb

    ids = ["0123456789abcdef0123456789abcdef", "ünïcødé ✓", "", "batch-line-7"]
    with duckdb.connect() as db:
        for custom_id in ids:
            sql = "SELECT md5_number_upper($1), md5_number_lower($1)"
            assert db.execute(sql, [custom_id]).fetchall()[0] == store._md5_halves(custom_id)


def test_answers_read_in_small_slices_keep_rows_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers read in slices smaller than a part: several row groups, every row still in its place."""
    monkeypatch.setattr(output_writer, "CHUNK_BYTES", 300)
    run = _store(tmp_path / "out.parquet", 9)
    run.write_results(
        [Result(f"id-{i:05d}", "ok", completion=f"answer {i} " * 10) for i in (8, 1, 0, 3, 5, 2, 7)]
    )
    run.close()

    out = run.assemble()

    frame = pl.read_parquet(out)
    assert frame["custom_id"].to_list() == [f"id-{i:05d}" for i in range(9)]
    expected = [None if i in (4, 6) else f"answer {i} " * 10 for i in range(9)]
    assert frame["completion"].to_list() == expected
    assert frame["status"].to_list() == ["pending" if i in (4, 6) else "ok" for i in range(9)]
    assert pq.ParquetFile(out).num_row_groups > 2
