"""PPO trainer that gets its rewards from the reward service over HTTP."""
