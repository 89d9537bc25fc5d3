"""The benchmark harness both suites share (seeds, statistics, steps-to-match, records), the held-out metrics and
memorisation checks, the baselines, and the LLM and vision benchmarks with their reports. Nothing here is imported
by the package itself: import the module you need."""
