"""The scoring engine: one process per device that batches token ids and runs the model.

- `protocol`: the messages between front ends and engines (read this first).
- `core`: the engine process's loop; `scheduler` and `model_runner` are its two parts.
- `supervisor`: starts engine processes, restarts one that dies, stops them.
- `client`: the front end's side of the socket.
"""
