"""IR -> PyTorch: ``to_torch(graph)`` gives a ``torch.fx.GraphModule`` that computes the graph (lower.py), one
lowering per op (ops.py), for training the graph's constants (accuracy recovery) and for a torch target."""
