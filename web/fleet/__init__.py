"""The fleet as operators steer it: the model registry and the nodes (GPU hosts)."""
