"""The sampler and the forwards: processors, the decode loop, the lean forwards and their attention, the kernels. Imports torch."""
