"""FluxGen (paper Sec. 3.1): generate, score (IQA), select, degrade."""
