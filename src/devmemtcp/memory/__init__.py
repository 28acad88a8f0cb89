"""dma-buf providers: host memory (memfd), udmabuf, CUDA."""
