"""FluxIR training (paper Sec. 3.3, 4.1): data, loss and the models, checkpoints, the loop under accelerate."""
