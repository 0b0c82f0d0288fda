"""The logging set-up both gunicorn confs use: JSON request lines, plain lines otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from fanout.logs import REQUESTS_LOGGER


def test_request_lines_are_json_and_the_other_lines_stay_plain() -> None:
    # In a fresh interpreter: dictConfig replaces the logging set-up of the process.
    script = textwrap.dedent(f"""
        import logging, logging.config
        from fanout.logs import logging_config
        logging.config.dictConfig(logging_config("info"))
        logging.getLogger("worker_api.app").info("worker %d ready", 7)
        logging.getLogger({REQUESTS_LOGGER!r}).info(
            "POST /generate 200", extra={{"fields": {{"status": 200, "request_id": "r-1",
                                                     "context": "line\\nbreak ü"}}}})
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True)

    plain, request = run.stderr.splitlines()
    assert plain.endswith("[INFO] worker_api.app: worker 7 ready")
    line = json.loads(request)
    assert request.isascii()  # one line, whatever text it carries
    assert line["message"] == "POST /generate 200" and line["logger"] == REQUESTS_LOGGER
    assert line["level"] == "INFO" and isinstance(line["pid"], int)
    assert line["status"] == 200 and line["request_id"] == "r-1"
    assert line["context"] == "line\nbreak ü"
    assert line["time"].endswith("+00:00")


def test_request_lines_follow_the_log_level() -> None:
    script = textwrap.dedent(f"""
        import logging, logging.config
        from fanout.logs import logging_config
        logging.config.dictConfig(logging_config("warning"))
        logging.getLogger({REQUESTS_LOGGER!r}).info("GET /health 200")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True)
    assert run.stderr == ""


def test_gunicorns_access_log_is_off_where_ours_tells_each_request() -> None:
    # gunicorn takes any logconfig_dict as access logging on; ours turns it off, so no
    # request pays for building a line the gunicorn.access logger would drop.
    script = textwrap.dedent("""
        from gunicorn import glogging
        from gunicorn.config import Config
        from fanout.logs import GunicornLogger, logging_config
        cfg = Config()
        cfg.set("logconfig_dict", logging_config("info"))
        print(glogging.Logger(cfg).access_log_enabled, GunicornLogger(cfg).access_log_enabled)
        GunicornLogger(cfg).access(None, None, None, None)  # builds nothing from them
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True)
    assert run.stdout.split() == ["True", "False"]
