#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz target (tests/robust/corpus/).

Each seed spells out one scenario in the input layout that fuzz_plan.cpp
decodes, so the fuzzer starts from inputs that reach every path: valid plans
of each dtype, every rejection rule, non-finite data under each policy,
extreme magnitudes, rebinding. Run it again after changing the layout.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OP_BYTES = 64
# indices of special_float's table
F = {'0': 0, '-0': 1, 1.0: 2, 2.0: 3, 0.5: 4, 3.0: 5, 'inf': 6, '-inf': 7, 'nan': 8,
     -1.0: 9, 'denorm': 10, 'max': 11, 1e-6: 12, 1e30: 13, 0.01: 14}
TOTAL, GLOBAL, PER_TENSOR, VALUE, REBIND, THREADS = range(6)
F32, F16, BF16, F64 = 0, 1, 2, 3


def u16(v):
    return struct.pack('<H', v)


def sf(v):
    """A special_float: a table entry, or ('raw', float) for any value."""
    if isinstance(v, tuple):
        return bytes([15]) + struct.pack('<f', v[1])
    if v not in F:  # any other number: raw bits
        return bytes([15]) + struct.pack('<f', v)
    return bytes([F[v]])


def tensor(offset, numel, dtype=F32, mode=0, extra=b''):
    return bytes([mode | dtype << 3]) + u16(offset) + u16(numel) + extra


def norm_op(op, max_norm=None, p=None, eps=None, inv_scale=None, policy=None, norms=False,
            null_options=False):
    which, body = 0, b''
    for bit, v in ((1, max_norm), (2, p), (4, eps), (8, inv_scale)):
        if v is not None:
            which |= bit
            body += sf(v)
    if policy is not None:
        which |= 16
        body += bytes([policy]) if policy < 240 else bytes([policy]) + struct.pack('<i', 7)
    if norms:
        which |= 32
    out = bytes([op, which]) + body
    if op == TOTAL:
        out += bytes([1 if null_options else 0])
    return out


def value_op(v):
    return bytes([VALUE]) + sf(v)


def rebind_op(entries, count_byte=0):
    return bytes([REBIND]) + b''.join(bytes([m]) + u16(o) for m, o in entries) + bytes([count_byte])


def seed(arena, tensors, ops, data, head=None, dev=0):
    head = len(tensors) if head is None else head
    ops_bytes = b''.join(ops)
    assert len(ops_bytes) <= OP_BYTES
    return (u16(arena) + bytes([head]) + b''.join(tensors) + bytes([dev, len(ops) - 1]) +
            ops_bytes.ljust(OP_BYTES, b'\0') + data)


def f32s(*vals):
    return b''.join(struct.pack('<f', v) for v in vals)


def h16(*bits):
    return b''.join(struct.pack('<H', b) for b in bits)


def f64s(*vals):
    return b''.join(struct.pack('<d', v) for v in vals)


NORMAL = f32s(0.3, -1.25, 2.5, -0.007, 1e-3, 4.0, -3.5, 0.125)
NAN32, INF32 = float('nan'), float('inf')
seeds = {
    'clip_f32': seed(64, [tensor(0, 16)], [norm_op(GLOBAL, max_norm=0.5)], NORMAL),
    'clip_three_dtypes': seed(96, [tensor(0, 8), tensor(32, 10, F16), tensor(64, 16, BF16)],
                              [norm_op(PER_TENSOR, max_norm=1.0, p=3.0, norms=True)],
                              NORMAL + h16(0x3c00, 0xbc00, 0x4500, 0x0001, 0x7bff)),
    'total_defaults': seed(32, [tensor(4, 4)], [norm_op(TOTAL, null_options=True)], NORMAL),
    'overlap_same': seed(64, [tensor(0, 8), tensor(0, 8)], [norm_op(GLOBAL)], NORMAL),
    'overlap_partial': seed(64, [tensor(0, 8), tensor(16, 8, F16)], [norm_op(GLOBAL)], NORMAL),
    'misaligned_f32': seed(64, [tensor(2, 8)], [norm_op(GLOBAL)], NORMAL),
    'misaligned_bf16': seed(64, [tensor(0, 4), tensor(17, 4, BF16)], [norm_op(GLOBAL)], NORMAL),
    'null_data': seed(64, [tensor(0, 4), tensor(0, 3, F32, 5, b'\x01')], [norm_op(GLOBAL)], NORMAL),
    'null_data_empty': seed(64, [tensor(0, 4), tensor(0, 3, F32, 5, b'\x00')],
                            [norm_op(GLOBAL, max_norm=0.01)], NORMAL),
    'bad_numel': seed(64, [tensor(0, 4, F32, 6, b'\x00')], [norm_op(GLOBAL)], NORMAL),
    'too_many_chunks': seed(64, [tensor(0, 4, F16, 6, b'\x04')], [norm_op(GLOBAL)], NORMAL),
    'bad_dtype': seed(64, [tensor(0, 4, F32, 7, struct.pack('<I', 9))], [norm_op(GLOBAL)], NORMAL),
    'null_list': seed(64, [tensor(0, 4)], [norm_op(GLOBAL)], NORMAL, head=0x81),
    'null_plan_arg': seed(64, [tensor(0, 4)], [norm_op(GLOBAL)], NORMAL, head=0x61),
    'bad_device': seed(64, [tensor(0, 4)], [norm_op(GLOBAL)], NORMAL, dev=240),
    'cuda_device': seed(64, [tensor(0, 4)], [norm_op(GLOBAL)], NORMAL, dev=248),
    'empty_plan': seed(0, [], [norm_op(GLOBAL, max_norm='0'), value_op(0.5), norm_op(TOTAL)], b''),
    'empty_tensors': seed(16, [tensor(0, 0), tensor(3, 0, BF16)],
                          [norm_op(PER_TENSOR, norms=True)], NORMAL),
    'denormals_p2': seed(32, [tensor(0, 8)], [norm_op(GLOBAL, max_norm='denorm')],
                         struct.pack('<8I', 1, 2, 3, 0x7fffff, 0x80000001, 5, 6, 7)),
    'denormals_p8': seed(32, [tensor(0, 8)], [norm_op(TOTAL, p=('raw', 8.0))],
                         struct.pack('<8I', 0x00800000, 2, 3, 0x7fffff, 0x80000001, 5, 6, 7)),
    'flt_max_overflow': seed(16, [tensor(0, 4)], [norm_op(GLOBAL, policy=0), norm_op(TOTAL, p='inf')],
                             f32s(3.4e38, -3.4e38, 3.4e38, 1.0)),
    'f16_extremes': seed(16, [tensor(0, 8, F16)], [norm_op(GLOBAL, max_norm=0.01, p=1.0)],
                         h16(0x7bff, 0xfbff, 0x0001, 0x8001, 0x03ff, 0x3c00, 0x0400, 0x7bfe)),
    'bf16_extremes': seed(16, [tensor(0, 8, BF16)], [norm_op(PER_TENSOR, max_norm=2.0, p='inf')],
                          h16(0x7f7f, 0xff7f, 0x0001, 0x8001, 0x007f, 0x3f80, 0x0080, 0x4000)),
    'inv_scale_denorm': seed(32, [tensor(0, 8)], [norm_op(GLOBAL, inv_scale='denorm')], NORMAL),
    'inv_scale_huge': seed(32, [tensor(0, 8)], [norm_op(GLOBAL, inv_scale=1e30, max_norm='inf')], NORMAL),
    'max_norm_zero': seed(32, [tensor(0, 8)], [norm_op(GLOBAL, max_norm='0')], NORMAL),
    # max_norm 0 with eps 0 over subnormals (N + eps has no float reciprocal)
    # and max_norm +Inf with eps past FLT_MAX - N: 0 x Inf, coefficients 0 and 1
    'max_norm_zero_eps_zero': seed(32, [tensor(0, 8)],
                                   [norm_op(PER_TENSOR, max_norm='0', eps='0'),
                                    norm_op(GLOBAL, max_norm='0', eps='0')],
                                   struct.pack('<8I', 1, 2, 3, 0x7fffff, 0x80000001, 5, 6, 7)),
    'max_norm_inf_eps_huge': seed(16, [tensor(0, 1)],
                                  [norm_op(GLOBAL, max_norm='inf', eps=('raw', 1e38)),
                                   norm_op(PER_TENSOR, max_norm='inf', eps=('raw', 1e38))],
                                  struct.pack('<4f', 3e38, 0, 0, 0)),
    'p_half': seed(32, [tensor(0, 8)], [norm_op(GLOBAL, p=0.5, max_norm=1.0)], NORMAL),
    'p_tiny': seed(32, [tensor(0, 8)], [norm_op(TOTAL, p=('raw', 1e-3))], NORMAL),
    'bad_options': seed(32, [tensor(0, 8)],
                        [norm_op(GLOBAL, max_norm=-1.0), norm_op(GLOBAL, p='0'),
                         norm_op(PER_TENSOR, eps='inf'), norm_op(TOTAL, inv_scale='0')], NORMAL),
    'bad_policy': seed(32, [tensor(0, 8)], [norm_op(GLOBAL, policy=250)], NORMAL),
    'value_clip': seed(64, [tensor(0, 8), tensor(32, 8, BF16)], [value_op(0.01), value_op('nan'),
                                                                 value_op('inf'), value_op('-0')],
                       NORMAL + h16(0x7fc0, 0xff80, 0x4000, 0xc000)),
    # f64 beside f32: scaled in double by the float factor, and each tensor by its own
    'clip_f64': seed(128, [tensor(0, 8, F64), tensor(64, 8)],
                     [norm_op(GLOBAL, max_norm=0.5), norm_op(PER_TENSOR, max_norm=1.0, p=3.0, norms=True)],
                     f64s(0.3, -1.25, 2.5, -0.007, 1e-3, 4.0, -3.5, 0.125) + NORMAL * 2),
    # f64 past float's range and below it: clamped in double, then its inf-norm (Inf in float)
    'value_f64_extremes': seed(64, [tensor(0, 8, F64)], [value_op(0.01), norm_op(TOTAL, p='inf')],
                               f64s(float('nan'), 1e300, -1e300, 1e-310, -0.0, 0.1, float('inf'), 1e-5)),
    'threads': seed(64, [tensor(0, 16)], [bytes([THREADS, 3]), bytes([THREADS, 0]),
                                          norm_op(GLOBAL, max_norm=0.1)], NORMAL),
    'rebind_ok': seed(128, [tensor(0, 8), tensor(32, 8, F16)],
                      [rebind_op([(0, 64), (0, 96)]), norm_op(GLOBAL, max_norm=0.1)], NORMAL * 4),
    'rebind_overlap': seed(128, [tensor(0, 8), tensor(32, 8, F16)],
                           [rebind_op([(0, 64), (0, 64)]), norm_op(GLOBAL, max_norm=0.1)], NORMAL * 4),
    'rebind_misaligned': seed(128, [tensor(0, 8), tensor(32, 8, F16)],
                              [rebind_op([(0, 65), (6, 0)]), rebind_op([(7, 0), (7, 0)], 241),
                               norm_op(GLOBAL, max_norm=0.1)], NORMAL * 4),
}
for pol in range(3):
    seeds['nan_global_policy%d' % pol] = seed(
        32, [tensor(0, 8)], [norm_op(GLOBAL, max_norm=0.5, policy=pol)], f32s(1, 2, NAN32, 4, 5, 6, 7, 8))
    seeds['inf_per_tensor_policy%d' % pol] = seed(
        64, [tensor(0, 8, BF16), tensor(16, 8)],
        [norm_op(PER_TENSOR, max_norm=0.5, policy=pol, norms=True)],
        h16(0x3f80, 0x7f80, 0x4000, 0xc000, 1, 2, 3, 4) + f32s(1, 2, 3, 4, 5, 6, 7, 8))
    seeds['inf_total_p3_policy%d' % pol] = seed(
        32, [tensor(0, 8)], [norm_op(TOTAL, p=3.0, policy=pol)], f32s(1, -INF32, 3, 4, 5, 6, 7, 8))

out = os.path.join(HERE, 'corpus')
os.makedirs(out, exist_ok=True)
for name, data in sorted(seeds.items()):
    with open(os.path.join(out, name), 'wb') as f:
        f.write(data)
print('%d seeds written to %s' % (len(seeds), out))
