import json
import logging

from serving.logs import JsonFormatter, PlainFormatter


def record(**extra):
    logger = logging.getLogger("bubo.test")
    rec = logger.makeRecord("bubo.test", logging.INFO, __file__, 1, "chat done", (), None, extra=extra)
    return rec


def test_json_lines_carry_the_extra_fields():
    line = JsonFormatter().format(record(request_id="abc", completion_tokens=12, total_ms=3.5))
    data = json.loads(line)
    assert data["message"] == "chat done" and data["level"] == "INFO" and data["logger"] == "bubo.test"
    assert data["request_id"] == "abc" and data["completion_tokens"] == 12 and data["total_ms"] == 3.5
    assert data["ts"].endswith("Z")


def test_plain_lines_append_key_values():
    line = PlainFormatter().format(record(request_id="abc"))
    # other libraries may add record attributes of their own (vLLM adds its process name)
    assert "bubo.test: chat done " in line and line.endswith("request_id=abc")
