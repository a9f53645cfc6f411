"""Loss functions as pure functions, one algorithm per module (shapes and paper in each docstring)."""
