"""BedrockJudge against the local fake Bedrock: the real boto3 path, no AWS."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path

import pytest

from harness.fake_bedrock import (
    FakeBedrock,
    Reply,
    article_judge,
    converse_reply,
    error_reply,
    fail_first,
    text_reply,
    tool_reply,
)
from harness.service import bedrock_settings, isolate_aws
from reward_service.errors import NotReady, UpstreamFailed, UpstreamTimeout
from reward_service.metrics import ServiceMetrics
from reward_service.scorers.base import ScoreOptions, ScoreOutput
from reward_service.scorers.bedrock import BedrockJudge
from reward_service.scorers.judge_templates import TOXICITY
from reward_service.settings import DEFAULT_BEDROCK_MODEL, ServiceSettings

LIKE, HATE = "I like you.", "You are terrible and i hate you."
OPTIONS = ScoreOptions(truncation_side="left")


def run_batches(
    settings: ServiceSettings, *batches: list[str], metrics: ServiceMetrics | None = None
) -> list[ScoreOutput | Exception]:
    """Start one judge, score each batch in turn (keeping errors), close it."""

    async def main() -> list[ScoreOutput | Exception]:
        judge = BedrockJudge("claude-bedrock", settings, metrics or ServiceMetrics())
        await judge.start()
        assert judge.ready, judge.info().error
        results: list[ScoreOutput | Exception] = []
        try:
            for batch in batches:
                try:
                    results.append(await judge.score(batch, OPTIONS))
                except (UpstreamFailed, NotReady) as exc:
                    results.append(exc)
        finally:
            await judge.close()
        return results

    return asyncio.run(main())


def scores_of(settings: ServiceSettings, texts: list[str]) -> list[float]:
    (result,) = run_batches(settings, texts)
    assert isinstance(result, ScoreOutput), result
    return result.scores


def error_of(settings: ServiceSettings, texts: list[str]) -> UpstreamFailed:
    (result,) = run_batches(settings, texts)
    assert isinstance(result, UpstreamFailed), result
    return result


def counter(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_forced_tool_call_gives_the_article_scores_through_a_signed_converse_request(
    fake_bedrock: FakeBedrock,
) -> None:
    assert scores_of(bedrock_settings(fake_bedrock), [LIKE, HATE]) == [5.0, -4.0]
    call = fake_bedrock.calls[0]
    assert call.model_id == DEFAULT_BEDROCK_MODEL  # sent URL-encoded, decoded by the server
    assert call.authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDFAKEFAKEFAKE/")
    assert call.request["system"] == [{"text": TOXICITY.system}]
    assert call.request["inferenceConfig"] == {"temperature": 0.0, "maxTokens": 128}
    tool_config = call.request["toolConfig"]
    assert tool_config["toolChoice"] == {"tool": {"name": "record_score"}}
    schema = tool_config["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"]["score"]
    assert (schema["type"], schema["minimum"], schema["maximum"]) == ("integer", -5, 5)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("+5", 5.0),
        ("-4", -4.0),
        ("**-3**", -3.0),
        ("Rate: -2 (on a scale from -5 to +5)", -2.0),
        ("\u22121", -1.0),
        ("-4/5", -4.0),
    ],
)
def test_text_replies_are_parsed_when_tools_are_off(
    fake_bedrock: FakeBedrock, reply: str, expected: float
) -> None:
    fake_bedrock.handler = lambda text, request: text_reply(reply)
    assert scores_of(bedrock_settings(fake_bedrock, bedrock_use_tools=False), [LIKE]) == [expected]
    assert "toolConfig" not in fake_bedrock.calls[0].request


def test_a_text_answer_to_a_tool_request_is_still_read(fake_bedrock: FakeBedrock) -> None:
    fake_bedrock.handler = lambda text, request: text_reply("My rating: 3")
    assert scores_of(bedrock_settings(fake_bedrock), [LIKE]) == [3.0]


@pytest.mark.parametrize(
    "bad",
    [
        text_reply("I would rather not rate this."),
        text_reply("Somewhere between 2 and 4."),
        tool_reply(7),
        tool_reply(2.5),
        tool_reply("very toxic"),
        tool_reply(True),
        converse_reply([{"toolUse": {"toolUseId": "t", "name": "record_score", "input": {}}}], "tool_use"),
        converse_reply([], "max_tokens"),
        Reply(body="<html>not json</html>"),
        Reply(body=b'{"output": {"message": {"content": [{"text": "\xff\xfe 3"}]}}}'),
        tool_reply(10**400),
        converse_reply({"text": "3"}, "end_turn"),  # type: ignore[arg-type]
        text_reply("Score: 3. Actually I would say 4 out of 5."),
        text_reply("Score: 3 (on a scale from -5 to 5)... or 2"),
    ],
)
def test_malformed_replies_fail_the_request_for_good_and_invent_nothing(
    fake_bedrock: FakeBedrock, bad: Reply
) -> None:
    fake_bedrock.handler = lambda text, request: bad if text == HATE else article_judge(text, request)
    metrics = ServiceMetrics()
    (error,) = run_batches(bedrock_settings(fake_bedrock), [LIKE, HATE, LIKE], metrics=metrics)
    assert isinstance(error, UpstreamFailed)
    # 424, not 502: the model answered, and asking again would give the same answer.
    assert error.status_code == 424
    assert "could not score 1 of 3 texts" in error.detail and "malformed" in error.detail
    assert fake_bedrock.calls_for(HATE) == 1  # no retry upstream either
    assert counter(metrics, "reward_judge_calls_total", scorer="claude-bedrock", outcome="malformed") == 1


@pytest.mark.parametrize(
    "content",
    [
        [
            {"toolUse": {"toolUseId": "a", "name": "record_score", "input": {"score": 5}}},
            {"toolUse": {"toolUseId": "b", "name": "record_score", "input": {"score": -5}}},
        ],
        [{"toolUse": {"toolUseId": "a", "name": "record_score", "input": {"score": 5, "other": -5}}}],
    ],
    ids=["two calls", "extra key"],
)
def test_an_ambiguous_tool_reply_is_a_424_not_a_score(
    fake_bedrock: FakeBedrock, content: list[dict[str, object]]
) -> None:
    def ambiguous(text: str, request: dict[str, object]) -> Reply:
        return converse_reply(content, "tool_use") if text == HATE else article_judge(text, request)

    fake_bedrock.handler = ambiguous
    metrics = ServiceMetrics()
    (result,) = run_batches(bedrock_settings(fake_bedrock), [LIKE, HATE], metrics=metrics)
    assert isinstance(result, UpstreamFailed) and result.status_code == 424
    assert "ambiguous" in result.detail and "could not score 1 of 2 texts" in result.detail
    assert counter(metrics, "reward_judge_calls_total", scorer="claude-bedrock", outcome="malformed") == 1


def test_a_request_that_ended_leaves_no_calls_holding_the_capacity(fake_bedrock: FakeBedrock) -> None:
    hung = [f"hung {i}" for i in range(6)]
    fake_bedrock.delays = {text: 20.0 for text in hung}
    settings = bedrock_settings(fake_bedrock, bedrock_max_concurrency=2)

    async def main() -> ScoreOutput:
        judge = BedrockJudge("claude-bedrock", settings, ServiceMetrics())
        await judge.start()
        try:
            first = asyncio.create_task(judge.score(hung, OPTIONS))
            deadline = time.monotonic() + 10
            while len(fake_bedrock.calls) < 2:  # both slots taken by hung calls
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            first.cancel()  # its deadline passed, or its client went away
            with pytest.raises(asyncio.CancelledError):
                await first
            # Would wait for the hung calls (20 s) if they still held the two slots.
            return await asyncio.wait_for(judge.score([LIKE, HATE], OPTIONS), 15)
        finally:
            await judge.close()

    output = asyncio.run(main())
    assert output.scores == [5.0, -4.0]
    # The ended request's other texts were never sent.
    assert sum(fake_bedrock.calls_for(text) for text in hung) == 2


def test_throttling_is_retried_by_the_judge_alone_then_succeeds(fake_bedrock: FakeBedrock) -> None:
    fake_bedrock.handler = fail_first(1, error_reply(429, "ThrottlingException", "Too many requests"))
    assert scores_of(bedrock_settings(fake_bedrock), [LIKE, HATE]) == [5.0, -4.0]
    assert fake_bedrock.calls_for(LIKE) == 2 and fake_bedrock.calls_for(HATE) == 2


def test_model_timeouts_are_retried_although_botocore_does_not(fake_bedrock: FakeBedrock) -> None:
    fake_bedrock.handler = fail_first(1, error_reply(408, "ModelTimeoutException", "Model timed out"))
    metrics = ServiceMetrics()
    (result,) = run_batches(
        bedrock_settings(fake_bedrock, bedrock_retry_total_s=10), [LIKE, HATE], metrics=metrics
    )
    assert isinstance(result, ScoreOutput) and result.scores == [5.0, -4.0]
    assert counter(metrics, "reward_judge_retries_total", scorer="claude-bedrock") == 2


def test_timeouts_that_outlast_the_retry_budget_give_504(fake_bedrock: FakeBedrock) -> None:
    fake_bedrock.handler = lambda text, request: error_reply(408, "ModelTimeoutException", "Model timed out")
    started = time.perf_counter()
    error = error_of(bedrock_settings(fake_bedrock, bedrock_retry_total_s=0.5), [LIKE, HATE])
    assert time.perf_counter() - started < 10
    assert isinstance(error, UpstreamTimeout) and error.status_code == 504
    assert (
        "could not score 2 of 2 texts" in error.detail
        and "ModelTimeoutException: Model timed out" in error.detail
    )


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (403, "AccessDeniedException", "User is not authorized to perform: bedrock:InvokeModel"),
        (400, "ValidationException", "The provided model identifier is invalid."),
    ],
)
def test_access_and_validation_errors_surface_at_once_with_the_aws_message(
    fake_bedrock: FakeBedrock, status: int, code: str, message: str
) -> None:
    fake_bedrock.handler = lambda text, request: error_reply(status, code, message)
    error = error_of(bedrock_settings(fake_bedrock, bedrock_retry_total_s=30), [LIKE, HATE])
    # 424, which the shared client does not retry: a permission problem reaches the trainer at once.
    assert error.status_code == 424 and f"{code}: {message}" in error.detail
    assert len(fake_bedrock.calls) == 2  # one call per text: not retried


def test_content_filter_is_an_explicit_failure_not_a_score(fake_bedrock: FakeBedrock) -> None:
    def filtering(text: str, request: dict[str, object]) -> Reply:
        return converse_reply([], "content_filtered") if text == HATE else article_judge(text, request)

    fake_bedrock.handler = filtering
    metrics = ServiceMetrics()
    (result,) = run_batches(bedrock_settings(fake_bedrock), [LIKE, HATE], metrics=metrics)
    assert isinstance(result, UpstreamFailed) and result.status_code == 424
    assert "could not score 1 of 2 texts" in result.detail and "content_filtered" in result.detail
    assert (
        counter(metrics, "reward_judge_calls_total", scorer="claude-bedrock", outcome="content_filtered") == 1
    )
    assert counter(metrics, "reward_judge_calls_total", scorer="claude-bedrock", outcome="ok") == 1


def test_a_batch_runs_with_bounded_concurrency(fake_bedrock: FakeBedrock) -> None:
    n, latency, concurrency = 24, 0.2, 8
    fake_bedrock.latency_s = latency
    texts = [f"text number {i}" for i in range(n)]
    started = time.perf_counter()
    scores = scores_of(bedrock_settings(fake_bedrock, bedrock_max_concurrency=concurrency), texts)
    elapsed = time.perf_counter() - started
    assert scores == [5.0] * n
    # Ideal is ceil(n / c) * latency = 0.6 s; one after another would take n * latency = 4.8 s.
    assert elapsed < n * latency / 2, (
        f"{elapsed:.2f}s for {n} texts (ideal {math.ceil(n / concurrency) * latency}s)"
    )
    assert 2 <= fake_bedrock.peak_in_flight <= concurrency


def test_identical_texts_are_scored_once_and_a_retry_after_a_partial_failure_is_cheap(
    fake_bedrock: FakeBedrock,
) -> None:
    flaky = fail_first(1, error_reply(403, "AccessDeniedException", "denied"))
    fake_bedrock.handler = lambda text, request: (
        flaky(text, request) if text == "flaky" else article_judge(text, request)
    )
    metrics = ServiceMetrics()
    first, second = run_batches(
        bedrock_settings(fake_bedrock), [LIKE, HATE, LIKE, "flaky"], [HATE, "flaky", LIKE], metrics=metrics
    )
    assert isinstance(first, UpstreamFailed) and "1 of 4 texts" in first.detail
    assert isinstance(second, ScoreOutput) and second.scores == [-4.0, 5.0, 5.0]
    assert fake_bedrock.calls_for(LIKE) == 1 and fake_bedrock.calls_for(HATE) == 1
    assert fake_bedrock.calls_for("flaky") == 2
    assert counter(metrics, "reward_cache_hits_total", scorer="claude-bedrock") == 2


def test_the_cache_can_be_turned_off(fake_bedrock: FakeBedrock) -> None:
    run_batches(bedrock_settings(fake_bedrock, bedrock_cache_size=0), [LIKE], [LIKE])
    assert fake_bedrock.calls_for(LIKE) == 2


def test_scale_and_offset_apply_to_the_judges_number(fake_bedrock: FakeBedrock) -> None:
    settings = bedrock_settings(fake_bedrock, bedrock_scale=0.5, bedrock_offset=1.0)
    assert scores_of(settings, [LIKE, HATE]) == [3.5, -1.0]


def test_summary_quality_template_takes_decimal_scores(fake_bedrock: FakeBedrock) -> None:
    fake_bedrock.handler = lambda text, request: tool_reply(4.25)
    settings = bedrock_settings(fake_bedrock, bedrock_template="summary-quality")
    assert scores_of(settings, ["Summarize ... Summary: a fine summary"]) == [4.25]
    request = fake_bedrock.calls[0].request
    schema = request["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"]["score"]
    assert (schema["type"], schema["minimum"], schema["maximum"]) == ("number", 1.0, 5.0)
    assert "coherence, accuracy, coverage" in request["system"][0]["text"]
    assert request["messages"][0]["content"][0]["text"].endswith("Summary: a fine summary")


def test_a_user_template_file_sets_prompt_and_range(fake_bedrock: FakeBedrock, tmp_path: Path) -> None:
    template = tmp_path / "helpfulness.toml"
    template.write_text(
        'system = "Rate how helpful the answer is, 0 to 10."\n'
        'user = "Answer: {text}"\nmin_score = 0\nmax_score = 10\n'
    )
    fake_bedrock.handler = lambda text, request: text_reply("8")
    settings = bedrock_settings(fake_bedrock, bedrock_template=str(template), bedrock_use_tools=False)
    assert scores_of(settings, ["Use {braces} freely"]) == [8.0]
    request = fake_bedrock.calls[0].request
    assert request["system"] == [{"text": "Rate how helpful the answer is, 0 to 10."}]
    assert request["messages"][0]["content"][0]["text"] == "Answer: Use {braces} freely"


def _failed_start(settings: ServiceSettings) -> tuple[str, str | None, Exception]:
    async def main() -> tuple[str, str | None, Exception]:
        judge = BedrockJudge("claude-bedrock", settings, ServiceMetrics())
        await judge.start()
        with pytest.raises(NotReady) as caught:
            await judge.score([LIKE], OPTIONS)
        await judge.close()
        return judge.info().state, judge.info().error, caught.value

    return asyncio.run(main())


def test_without_a_region_the_judge_fails_to_start_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    isolate_aws(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-key")
    state, error, raised = _failed_start(ServiceSettings(_env_file=None, scorers=["claude-bedrock"]))
    assert state == "failed" and "no AWS region" in (error or "") and "REWARD_BEDROCK_REGION" in (error or "")
    assert "no AWS region" in str(raised)


def test_without_credentials_the_judge_fails_to_start_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    isolate_aws(monkeypatch, tmp_path)
    settings = ServiceSettings(_env_file=None, scorers=["claude-bedrock"], bedrock_region="eu-west-1")
    state, error, _ = _failed_start(settings)
    assert state == "failed" and "no AWS credentials" in (error or "")


def test_an_unknown_template_fails_the_judge_with_the_choices(fake_bedrock: FakeBedrock) -> None:
    state, error, _ = _failed_start(bedrock_settings(fake_bedrock, bedrock_template="no-such-template"))
    assert state == "failed" and "toxicity, summary-quality" in (error or "")


def test_credentials_stay_out_of_the_logs_even_at_debug_level(
    fake_bedrock: FakeBedrock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "fake-session-token-value")
    caplog.set_level(logging.DEBUG)
    assert scores_of(bedrock_settings(fake_bedrock), [LIKE]) == [5.0]
    assert "claude-bedrock ready" in caplog.text
    for secret in ("fake-session-token-value", "fake-secret-key", "AKIDFAKEFAKEFAKE"):
        assert secret not in caplog.text
