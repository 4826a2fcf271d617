"""Tools: the dataset checker, the offline ImageNet weights, the demo and its synthetic texture dataset."""
