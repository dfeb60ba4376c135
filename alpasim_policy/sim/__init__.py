"""The closed-loop env: the Gymnasium env, its observation/action contract, config, tracker, agents."""
