"""Helpers shared by the tests and the benchmarks, run from a checkout (not shipped in the wheel).

- `harness.live_server`: an ASGI app served by uvicorn on a loopback port, for real-HTTP runs.
- `harness.fake_bedrock`: a local Bedrock Converse endpoint, so the real boto3 path runs offline.
- `harness.reference_scoring`: texts scored one at a time in-process, the ground truth for scores.
- `harness.asgi_request`: a bare `Request` holding a body, for decoding tests without a server.
- `harness.service`: the service's settings as tests build them (CPU, no `.env`, no AWS config).
- `harness.metrics`: the /metrics page read as numbers, and waits on its values instead of sleeps.
- `harness.engine_gate`: a gate the test holds in front of the engine's forward (busy on demand).
- `harness.build_cache`, `harness.tiny_stand_ins`: stand-in models built once, keyed by a hash of
  their builder's code.
- `harness.load`: the concurrent-client load driver of `tests/test_reliability_load.py` and
  `python -m bench.load_test`.
"""
