"""What the tests and the benchmarks both run against: fake providers that speak each provider's wire format over
real HTTP (`harness.fakes`), a fresh database per run (`harness.pg`), `spendgate serve` processes and an operator
client (`harness.cluster`), and Debian's nginx in front of them (`harness.nginx`). Not part of the product: the
wheel ships `gateway` only."""
