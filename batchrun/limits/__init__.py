"""What a request waits for, and how failures are judged: pacer, limiter, AIMD, breaker, retries."""
