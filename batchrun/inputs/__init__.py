"""The prompt set: reading it, checking every row before the first request, rendering requests."""
