"""Amaranth HDL components of the pNPU (matrix/vector engines, scratchpad, DMA, uTOp scheduler).

The RTL is built in the pNPU issue; it reads every hardware number from
:class:`tcloud.isa.ArchConfig` and derives its decoder from the ISA table.
"""
