"""Is the judge usable? Checked in seconds, before hours of training end in an evaluation that cannot run.

* `verifier`: the verifier imports (a user's `module:function` included);
* `local`: llama-cpp-python's server is installed and the GGUF file exists (what starting the server needs; the
  server itself is started only when there is something to judge);
* a remote endpoint: a model is named (JudgeConfig checks that), the key variable is set, and `GET <base_url>/models`
  answers (any HTTP status but 401/403 counts as reachable: some servers do not list models).
"""

from __future__ import annotations

import urllib.error
import urllib.request

from alignkit.data.verifier import load_verifier
from alignkit.endpoint import redact_url
from alignkit.errors import AlignkitError
from alignkit.judge.config import JudgeConfig
from alignkit.judge.local_server import LocalJudgeServer


def validate_judge(judge: JudgeConfig, timeout_s: float = 10.0) -> None:
    """Raises AlignkitError naming the setting at fault; returns None when the judge can be used."""
    if judge.is_verifier:
        load_verifier(judge.verifier, "judge.verifier")
        return
    if judge.is_local:
        LocalJudgeServer(judge.local_gguf)  # the constructor checks the install and the GGUF, and starts nothing
        return
    key = judge.api_key()  # raises when the named variable is unset
    url = judge.base_url.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    where = redact_url(judge.base_url)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise AlignkitError(
                f"judge at {where} refused the key in ${judge.api_key_env} (HTTP {e.code}); check judge.api_key_env."
            ) from None
        return  # the server answered: reachable
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise AlignkitError(
            f"judge.base_url={where}: not reachable ({reason}); check the URL, or use 'local' or 'verifier'."
        ) from None
