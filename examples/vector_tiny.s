# Vector-engine example for the `tiny` config:
#   Y = requant(relu(X + bias))  (4x8 int32 -> int8),  Z[r] = max(Y[r, :])
# Run it:  tcloud asm examples/vector_tiny.s -o build/vector.tcimg && tcloud run build/vector.tcimg
.config tiny
.footprint hbm=0x400 sram=0x200
.entry 0x200
.input  X i32 4x8 offset=0x0
.output Y i8  4x8 offset=0x100 stride=8
.output Z i32 4   offset=0x140
# bias: eight int32 constants -100, -50, 0, 50, 100, 150, 200, 250 (little-endian)
.data 0x80 9cffffff ceffffff 00000000 32000000 64000000 96000000 c8000000 fa000000

utop cls=dma signal=t0                      # load X and the bias
  dma.load sram=0x0  hbm=0x0  rows=4 row_bytes=32 hbm_stride=32 sram_stride=32
  dma.load sram=0x80 hbm=0x80 rows=1 row_bytes=32
utop cls=ve signal=t1 wait0=t0 count0=1     # compute once both loads are done
  ve.shape rows=4 dst_stride=32 src1_stride=32 src2_stride=0
  ve.add   dst=0x0 src1=0x0 src2=0x80 n=8   # bias broadcast to every row
  ve.relu  dst=0x0 src=0x0 n=8
  ve.shape rows=4 dst_stride=8 src1_stride=32
  ve.requant dst=0x100 src=0x0 n=8 mult=1073741824 shift=33 zp=-3   # x/8 - 3, ties to even
  ve.shape rows=4 dst_stride=4 src1_stride=8
  ve.redmax dst=0x140 src=0x100 n=8 src_i8=1
utop cls=dma wait0=t1 count0=1              # store Y and Z
  dma.store sram=0x100 hbm=0x100 rows=4 row_bytes=8 hbm_stride=8 sram_stride=8
  dma.store sram=0x140 hbm=0x140 rows=1 row_bytes=16
halt
