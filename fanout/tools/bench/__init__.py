"""Benchmarks of fanout against the other ways of serving N completions (`fanout bench`,
`fanout slow-clients`)."""
