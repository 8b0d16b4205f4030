"""PPO trainer that gets its rewards from the reward service over HTTP."""

import os

# trl is pinned (pyproject.toml): its PPO lives in trl.experimental in that release, whose import
# warns on every command, `--help` included, that experimental APIs may change. The pin already
# answers that; the operator can still ask for the warning with TRL_EXPERIMENTAL_SILENCE=0.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
