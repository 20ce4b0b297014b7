"""medseg-xdp: XDP micro-segmentation for hospital networks."""
