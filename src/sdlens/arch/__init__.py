"""Architecture knowledge as data: the registry, detection, key conventions, block maps, configs."""
