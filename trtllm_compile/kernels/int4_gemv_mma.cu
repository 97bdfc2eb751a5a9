// INT4 weight-only GEMV of one row on the tensor cores: the "mma" plans of kernels/int4_gemv.py, which compiles
// this file with NVRTC (no headers: raw 16-bit values and inline PTX) and documents the method.
//
// y[n] = sum_k x[k] * s[n, g] * (q[n, k] - z[n, g]), with q the 4-bit codes of the packed [N, K / 2] weight
// (code 2i in the low nibble of byte i: read as 32-bit words, code j of a word in bits 4j..4j+3).
//
// A warp takes 16 rows (a row block) at a time and walks K in steps of 128 (one group, K_STEP): lane
// (row r = lane / 4, quarter c = lane % 4) loads 16 bytes of row r and 16 of row r + 8, the 32 codes at
// K = 128 step + 32 c + 0..31, and the x values of those K. A GEMV's sum does not care in which order its K
// are taken, so each code goes to the mma.m16n8k16 operand slot this lane holds, as it comes, and x is put in
// the matching slots of B: every column of B is x, so every column of C is the result and each lane's C
// registers hold its two rows' sums, with no shuffles. Codes leave the word as (magic + code) pairs, one LOP3
// each (bf16 128 + code, fp16 1024 + code); the magic and the zero point are taken off once a group, with the
// group's sum of x from one more MMA against ones: s * (sum x (magic + q) - (magic + z) * sum x).
// 7 instructions a word of eight codes (3 shifts, 4 LOP3) and one MMA, against 14 for the hfma path.
//
// Gated (ACTIVATION >= 0): the weight is a gated MLP's fused [gate; up] (2 n rows) and y = act(gate) * up (n
// values). A block's first half of row blocks takes gate rows, its second half the up rows of the same outputs,
// so both sums of an output meet in the block's shared memory and the activation is its epilogue: no [2 n]
// intermediate and no activation kernel (a launch and a round trip a layer at batch 1).

typedef unsigned int u32;
typedef unsigned short u16;

#define DEVICE __device__ __forceinline__

constexpr int K_STEP = 128;  // the K of a row block's step: four lanes' 16-byte loads, one group

// A 16-bit value in fp32: fp16 with F16, else bf16.
template <bool F16>
DEVICE float from_half(u16 bits) {
    if (!F16) return __uint_as_float(u32(bits) << 16);
    float value;
    asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(bits));
    return value;
}

// A value in fp32. KIND: 0 fp32, 1 bf16, 2 fp16.
template <int KIND>
DEVICE float load_value(const void* base, int i) {
    if (KIND == 0) return __ldg(reinterpret_cast<const float*>(base) + i);
    return from_half<KIND == 2>(__ldg(reinterpret_cast<const u16*>(base) + i));
}

template <bool F16>
DEVICE u16 to_half(float value) {
    u16 bits;
    if (F16) asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(value));
    else asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(bits) : "f"(value));
    return bits;
}

// fp32 to x's dtype and back: the rounding of a value eager PyTorch holds in that dtype.
template <bool F16>
DEVICE float rounded(float value) {
    return from_half<F16>(to_half<F16>(value));
}

// The MLP activation in fp32, written as PyTorch's CUDA kernels write it. ACTIVATION: kernels/activation.py's
// ACTIVATION_IDS (0 silu, 1 gelu, 2 gelu_tanh, 3 relu).
template <int ACTIVATION>
DEVICE float activate(float g) {
    if (ACTIVATION == 0) return g / (1.0f + expf(-g));
    if (ACTIVATION == 1) return g * 0.5f * (1.0f + erff(g * 0.70710678118654752f));
    if (ACTIVATION == 2) return 0.5f * g * (1.0f + tanhf(0.79788456080286536f * (g + 0.044715f * (g * g * g))));
    return fmaxf(g, 0.0f);
}

// c += A @ B for A a 16 x 16 tile (registers a0-a3) and B 16 x 8 (b0, b1), fp32 sums.
template <bool F16>
DEVICE void mma(float (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#define MMA_M16N8K16(TYPE)                                                                                \
    asm("mma.sync.aligned.m16n8k16.row.col.f32." TYPE "." TYPE ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, " \
        "{%0,%1,%2,%3};"                                                                                  \
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                                  \
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1))
    if (F16) MMA_M16N8K16("f16");
    else MMA_M16N8K16("bf16");
#undef MMA_M16N8K16
}

// Codes j and j + 4 of a word (bits 4j and 16 + 4j) as the 16-bit pair (magic + code_j, magic + code_j+4).
DEVICE u32 code_pair(u32 word, int j, u32 magic2) {
    u32 pair;
    asm("lop3.b32 %0, %1, 0x000F000F, %2, 0xEA;" : "=r"(pair) : "r"(word >> (4 * j)), "r"(magic2));
    return pair;
}

// The weight is streamed once: not kept in L1 (x is), and L2 fetches 256 bytes at a time.
DEVICE uint4 load_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// grid (ceil(N / (16 ROW_BLOCKS))), WARPS warps a block. The warps share the block's rows and take turns at K:
// warp w takes steps STEPS w .. STEPS (w + 1) - 1, then those WARPS STEPS on, all of a turn's loads issued
// before its math. Their sums meet in shared memory, added in warp order (deterministic).
// F16: x is fp16 (else bf16); SCALE_KIND: the scales' and zero points' dtype (load_value); GROUP_STEPS: the
// group size over K_STEP; ACTIVATION: -1 a plain GEMV, else gated with that activation (see the top).
template <bool F16, int SCALE_KIND, bool HAS_ZEROS, bool HAS_BIAS, int ACTIVATION, int GROUP_STEPS, int ROW_BLOCKS,
          int STEPS, int WARPS, bool PREFETCH, bool PDL>
__global__ void __launch_bounds__(WARPS * 32) int4_mma_gemv(
    const uint4* __restrict__ x,  // [K / 8]: x's values eight at a time
    const uint4* __restrict__ w,  // [N, w_row_chunks]: 16 bytes (32 codes) at a time
    const void* __restrict__ scales, const void* __restrict__ zeros,  // [N, G], one row stride
    const u16* __restrict__ bias,  // [N]
    u16* __restrict__ y,           // [n]: N = n, or 2 n gated
    int n, int k, int w_row_chunks, int scale_row_stride) {
    constexpr bool GATED = ACTIVATION >= 0;
    static_assert(!GATED || ROW_BLOCKS % 2 == 0, "a gated block takes as many up rows as gate rows");
    constexpr int ROWS = 16 * ROW_BLOCKS;
    constexpr int OUTPUTS = GATED ? ROWS / 2 : ROWS;  // the values of y a block stores
    static_assert(ROWS <= WARPS * 32, "a thread a row to store");
    constexpr u32 MAGIC2 = F16 ? 0x64006400u : 0x43004300u;
    constexpr float MAGIC = F16 ? 1024.0f : 128.0f;
    constexpr u32 ONES = F16 ? 0x3C003C00u : 0x3F803F80u;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int quad_row = lane >> 2, quad_col = lane & 3;
    const int out0 = blockIdx.x * OUTPUTS;
    const int steps = k / K_STEP;

    constexpr int SCALE_BYTES = SCALE_KIND == 0 ? 4 : 2;
    const uint4* w_rows[ROW_BLOCKS][2];
    const char *scale_rows[ROW_BLOCKS][2], *zero_rows[ROW_BLOCKS][2];
    float acc[ROW_BLOCKS][2];
#pragma unroll
    for (int b = 0; b < ROW_BLOCKS; ++b)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const bool up_rows = GATED && b >= ROW_BLOCKS / 2;  // gated: the up half, rows n on
            const int out = out0 + 16 * (up_rows ? b - ROW_BLOCKS / 2 : b) + quad_row + 8 * h;
            const int row = (up_rows ? n : 0) + min(out, n - 1);  // outputs past n: re-read, not stored
            w_rows[b][h] = w + (long)row * w_row_chunks + quad_col;
            scale_rows[b][h] = reinterpret_cast<const char*>(scales) + (long)row * scale_row_stride * SCALE_BYTES;
            zero_rows[b][h] = reinterpret_cast<const char*>(zeros) + (long)row * scale_row_stride * SCALE_BYTES;
            acc[b][h] = 0.0f;
        }

    // A turn's operands: STEPS K steps of the warp's rows, with their groups' scales and zero points.
    struct Turn {
        uint4 w[STEPS][ROW_BLOCKS][2], x[STEPS][4];
        float scale[STEPS][ROW_BLOCKS][2], zero[STEPS][ROW_BLOCKS][2];
    };
    // The weight, scales and zero points do not depend on the kernel before (PDL: read before waiting for it).
    auto load_weights = [&](Turn& turn, int first) {
#pragma unroll
        for (int s = 0; s < STEPS; ++s) {
            const int step = min(first + s, steps - 1);  // a step past the end: re-read, its x is zero
            const int group = step / GROUP_STEPS;
#pragma unroll
            for (int b = 0; b < ROW_BLOCKS; ++b)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    turn.w[s][b][h] = load_stream(w_rows[b][h] + step * (K_STEP / 32));
                    turn.scale[s][b][h] = load_value<SCALE_KIND>(scale_rows[b][h], group);
                    turn.zero[s][b][h] = HAS_ZEROS ? load_value<SCALE_KIND>(zero_rows[b][h], group) : 8.0f;
                }
        }
    };
    auto load_x = [&](Turn& turn, int first) {
#pragma unroll
        for (int s = 0; s < STEPS; ++s) {
            const uint4* xp = x + min(first + s, steps - 1) * (K_STEP / 8) + quad_col * 4;
#pragma unroll
            for (int j = 0; j < 4; ++j) turn.x[s][j] = first + s < steps ? __ldg(xp + j) : make_uint4(0, 0, 0, 0);
        }
    };
    auto add_turn = [&](const Turn& turn) {
#pragma unroll
        for (int s = 0; s < STEPS; ++s) {
            // x's pairs in the codes' order: word j's codes (i, i + 4) meet x (8j + i, 8j + i + 4)
            u32 xpair[4][4];
            float x_sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const uint4 v = turn.x[s][j];
                xpair[j][0] = __byte_perm(v.x, v.z, 0x5410);
                xpair[j][1] = __byte_perm(v.x, v.z, 0x7632);
                xpair[j][2] = __byte_perm(v.y, v.w, 0x5410);
                xpair[j][3] = __byte_perm(v.y, v.w, 0x7632);
                mma<F16>(x_sum, ONES, ONES, ONES, ONES, xpair[j][0], xpair[j][1]);
                mma<F16>(x_sum, ONES, ONES, ONES, ONES, xpair[j][2], xpair[j][3]);
            }
#pragma unroll
            for (int b = 0; b < ROW_BLOCKS; ++b) {
                float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                const u32* lo = reinterpret_cast<const u32*>(&turn.w[s][b][0]);
                const u32* hi = reinterpret_cast<const u32*>(&turn.w[s][b][1]);
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    mma<F16>(c, code_pair(lo[j], 0, MAGIC2), code_pair(hi[j], 0, MAGIC2), code_pair(lo[j], 1, MAGIC2),
                             code_pair(hi[j], 1, MAGIC2), xpair[j][0], xpair[j][1]);
                    mma<F16>(c, code_pair(lo[j], 2, MAGIC2), code_pair(hi[j], 2, MAGIC2), code_pair(lo[j], 3, MAGIC2),
                             code_pair(hi[j], 3, MAGIC2), xpair[j][2], xpair[j][3]);
                }
                // c[0]: row quad_row, c[2]: row quad_row + 8 (every column of C is the same)
#pragma unroll
                for (int h = 0; h < 2; ++h)
                    acc[b][h] += turn.scale[s][b][h] * fmaf(-(MAGIC + turn.zero[s][b][h]), x_sum[0], c[2 * h]);
            }
        }
    };

    // Two turns' registers in ping-pong (no copies): with PREFETCH the next turn's loads are in flight while this
    // turn's math runs, else they follow it.
    auto take_turn = [&](Turn& turn, Turn& ahead, int first) {
        const int next = first + WARPS * STEPS;
        Turn& loaded = PREFETCH ? ahead : turn;
        if (!PREFETCH) add_turn(turn);
        if (next < steps) {
            load_weights(loaded, next);
            load_x(loaded, next);
        }
        if (PREFETCH) add_turn(turn);
    };
    Turn ping, pong;
    int first = warp * STEPS;
    load_weights(ping, first);
    if (PDL) asm volatile("griddepcontrol.launch_dependents;\n\tgriddepcontrol.wait;" ::: "memory");
    load_x(ping, first);
    while (first < steps) {
        take_turn(ping, pong, first);
        first += WARPS * STEPS;
        if (first >= steps) break;
        take_turn(PREFETCH ? pong : ping, ping, first);
        first += WARPS * STEPS;
    }

    __shared__ float partial[WARPS][ROWS];
    if (quad_col == 0)
#pragma unroll
        for (int b = 0; b < ROW_BLOCKS; ++b)
#pragma unroll
            for (int h = 0; h < 2; ++h) partial[warp][16 * b + quad_row + 8 * h] = acc[b][h];
    __syncthreads();
    const int out = out0 + threadIdx.x;
    if (threadIdx.x < OUTPUTS && out < n) {
        auto row_sum = [&](int block_row, int row) {
            float sum = 0.0f;
#pragma unroll
            for (int v = 0; v < WARPS; ++v) sum += partial[v][block_row];
            return HAS_BIAS ? sum + load_value<F16 ? 2 : 1>(bias, row) : sum;
        };
        const float sum = row_sum(threadIdx.x, out);
        if (GATED) {  // as eager: gate and up in x's dtype, act(gate) rounded to it, then the product
            const float up = rounded<F16>(row_sum(threadIdx.x + OUTPUTS, n + out));
            y[out] = to_half<F16>(rounded<F16>(activate<ACTIVATION>(rounded<F16>(sum))) * up);
        } else {
            y[out] = to_half<F16>(sum);
        }
    }
}
