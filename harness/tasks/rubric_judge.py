"""A deterministic rubric judge for toy creative writing, served as an OpenAI-compatible endpoint.

The toy creative task asks the judge the way a judged benchmark does (a chat request
to `/v1/chat/completions`), so the same judge plumbing is exercised; but the "judge"
here reads the constraints and the story out of the prompt and scores them by rule:

* the named character appears;
* each required word appears (whole word, any case);
* the story has exactly the requested number of sentences;
* its length is plausible for that many sentences (3-25 words per sentence).

Score = 1 + 9 * (mean of the four parts, the word part being the fraction of words
present), in the reply format WildBench's judge parser reads: a JSON object with
"strengths", "weaknesses" and a 1-10 "score".

    python -m harness.tasks.rubric_judge --port 8123
    with RubricJudge() as judge: judge.endpoint()  # in Python, on a free port
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from harness.standins.toy.corpus import count_sentences

MODEL_NAME = "rubric-judge"
MIN_WORDS_PER_SENTENCE, MAX_WORDS_PER_SENTENCE = 3, 25
_CONSTRAINTS = re.compile(r"## Constraints\s*```json\s*(\{.*?\})\s*```", re.DOTALL)
_STORY = re.compile(r"<story>\n?(.*?)\n?</story>", re.DOTALL)


class JudgePromptError(ValueError):
    """The prompt is not a toy creative judge prompt (built by `build_judge_prompt`)."""


def build_judge_prompt(story: str, constraints: dict[str, Any]) -> str:
    """The judge prompt: the constraints as JSON, the story between <story> tags."""
    return (
        "Grade the story below against its explicit constraints.\n\n"
        f"## Constraints\n```json\n{json.dumps(constraints, sort_keys=True)}\n```\n\n"
        f"## Story\n<story>\n{story}\n</story>\n\n"
        'Reply with a JSON object {"strengths": ..., "weaknesses": ..., "score": 1-10}.'
    )


def parse_judge_prompt(prompt: str) -> tuple[str, dict[str, Any]]:
    """(story, constraints) from a prompt made by `build_judge_prompt`."""
    found, story = _CONSTRAINTS.search(prompt), _STORY.search(prompt)
    if not found or not story:
        raise JudgePromptError("not a toy creative judge prompt: expected a '## Constraints' ```json block "
                               "and a <story>...</story> block (see build_judge_prompt)")
    constraints = json.loads(found.group(1))
    missing = {"sentences", "character", "words"} - set(constraints)
    if missing:
        raise JudgePromptError(f"constraints lack {sorted(missing)}")
    return story.group(1), constraints


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE) is not None


def rubric(story: str, constraints: dict[str, Any]) -> dict[str, Any]:
    """The four parts of the rubric (each in [0, 1]) and the 1-10 score."""
    n = int(constraints["sentences"])
    words = list(constraints["words"])
    n_words = len(story.split())
    present = [w for w in words if _has_word(story, w)]
    parts = {
        "character": float(_has_word(story, constraints["character"])),
        "words": len(present) / len(words) if words else 1.0,
        "sentences": float(count_sentences(story) == n),
        "length": float(MIN_WORDS_PER_SENTENCE * n <= n_words <= MAX_WORDS_PER_SENTENCE * n),
    }
    score = 1.0 + 9.0 * sum(parts.values()) / len(parts)
    return {"parts": parts, "missing_words": [w for w in words if w not in present],
            "sentence_count": count_sentences(story), "word_count": n_words, "score": round(score, 4)}


def judge_reply(prompt: str) -> str:
    """The judge's reply text for one prompt (deterministic)."""
    story, constraints = parse_judge_prompt(prompt)
    graded = rubric(story, constraints)
    met = [k for k, v in graded["parts"].items() if v == 1.0]
    unmet = [k for k, v in graded["parts"].items() if v < 1.0]
    return json.dumps({
        "strengths": "constraints met: " + (", ".join(met) or "none"),
        "weaknesses": "constraints not met: " + (", ".join(unmet) or "none")
        + (f" (missing words: {', '.join(graded['missing_words'])})" if graded["missing_words"] else "")
        + f"; {graded['sentence_count']} sentences, {graded['word_count']} words",
        "score": graded["score"],
    })


def stand_in_reply(prompt: str) -> str:
    """A stand-in judge's reply to any judge prompt, for rehearsals: a well-formed verdict whose 1-10
    score is a hash of the prompt (deterministic, and no signal about quality)."""
    import hashlib

    score = 1 + int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 10
    return json.dumps({"strengths": "stand-in judge (rehearsal): not a judgement",
                       "weaknesses": "stand-in judge (rehearsal): not a judgement", "score": score})


# The local judges a sweep can start (`judge: {serve: NAME}`): the name and what it replies.
LOCAL_JUDGES = {"rubric": judge_reply, "stand_in": stand_in_reply}


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet HTTP handler that answers JSON (the base of small local OpenAI-style servers)."""

    def log_message(self, *args: Any) -> None:  # quiet: tests and sweeps keep their own logs
        return

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Handler(JsonHandler):
    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "owned_by": "harness"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            users = [m for m in body["messages"] if m.get("role") == "user"]
            if not users:
                raise JudgePromptError("no user message")
            content = users[-1]["content"]
            if isinstance(content, list):  # OpenAI content parts
                content = "".join(part.get("text", "") for part in content)
            reply = self.server.reply(content)
        except (JudgePromptError, KeyError, TypeError, ValueError) as exc:
            self._send(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
            return
        self._send(200, {
            "id": f"rubric-{int(time.time() * 1000)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", MODEL_NAME),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        })


class RubricJudge:
    """The rubric judge on 127.0.0.1 in a background thread: `with RubricJudge() as j: j.base_url`."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", reply=judge_reply):
        self.host, self.port = host, port
        self.reply = reply
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the rubric judge is not running")
        return f"http://{self.host}:{self._server.server_address[1]}/v1"

    def endpoint(self):
        from harness.tasks.base import Endpoint

        return Endpoint(base_url=self.base_url, model=MODEL_NAME)

    def start(self) -> RubricJudge:
        self._server = ThreadingHTTPServer((self.host, self.port), _Handler)
        self._server.reply = self.reply
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="rubric-judge")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> RubricJudge:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.tasks.rubric_judge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), _Handler)
    server.reply = judge_reply
    print(f"rubric judge on http://{args.host}:{server.server_address[1]}/v1 (model {MODEL_NAME})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
