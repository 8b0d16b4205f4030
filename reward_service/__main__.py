from reward_service.cli import main

# Guarded: worker processes started by `--workers N` import this module again.
if __name__ == "__main__":
    main()
