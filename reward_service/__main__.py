"""`python -m reward_service`: the `reward-service` script (which first checks the [service] extra)."""

from reward_service.console import main

# Guarded: worker processes started by `--workers N` import this module again.
if __name__ == "__main__":
    main()
