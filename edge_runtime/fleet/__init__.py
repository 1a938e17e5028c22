"""Running several boards as one service: the /health probe and the HAProxy and keepalived config writers."""
