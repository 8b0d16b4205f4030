"""Helpers shared by the tests and the benchmarks, run from a checkout (not shipped in the wheel).

- `harness.live_server`: an ASGI app served by uvicorn on a loopback port, for real-HTTP runs.
- `harness.fake_bedrock`: a local Bedrock Converse endpoint, so the real boto3 path runs offline.
- `harness.reference_scoring`: texts scored one at a time in-process, the ground truth for scores.
- `harness.load`: the concurrent-client load driver of `tests/test_reliability_load.py` and
  `python -m bench.load_test`.
"""
