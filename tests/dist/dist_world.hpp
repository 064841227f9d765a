// dist_world.hpp - one seeded global set of gradient tensors and the part
// of it that each rank of a simulated training job holds.
//
// Every rank generates the same global set from the seed, then keeps its
// pieces:
//   dense      each tensor split into `size` contiguous shards (FSDP/ZeRO),
//              group 0 (every rank), role SHARDED; small tensors leave some
//              ranks an empty shard;
//   replicated whole on every rank (a layer norm duplicated over TP), group
//              0, role REPLICATED: counted by rank 0 only;
//   tied       whole on the first and the last rank (an embedding tied
//              across pipeline stages), counted on the first only
//              (SHARDED there, NOT_COUNTED on the last);
//   experts    with expert parallelism (`ep` ranks per EP group, groups of
//              consecutive ranks), expert e lives on EP rank e % ep of every
//              EP group, so EP groups are replicas of each other; with
//              Layout::two_groups they form group 1 (the EP communicator),
//              otherwise they are dense tensors of group 0 held whole by
//              rank e % size.
// The reference is the single-process norm over the global set, each tensor
// once.
#ifndef GCLIP_DIST_WORLD_HPP
#define GCLIP_DIST_WORLD_HPP

#include "gclip_dist.h"
#include "oracle.hpp"

#include <cmath>
#include <cstring>
#include <vector>

namespace distw {

using oracle::TestBuffer;

enum class Kind { dense, replicated, tied, expert };

struct Layout {
    int rank = 0;
    int size = 1;
    int ep = 1;              // ranks per EP group (divides size)
    bool two_groups = false; // experts reduced over their EP group (group 1)
};

// Ranks per EP group for a world of `size`: 2 when that splits the world
// into several EP groups, else the whole world.
inline int default_ep(int size)
{
    return size % 2 == 0 && size > 2 ? 2 : size;
}

// World ranks of group `g` as seen from `rank`, in group-rank order.
inline std::vector<int> group_members(const Layout &l, int g, int rank)
{
    std::vector<int> m;
    if (g == 0) {
        for (int r = 0; r < l.size; ++r)
            m.push_back(r);
    } else {
        const int first = rank / l.ep * l.ep;
        for (int r = first; r < first + l.ep; ++r)
            m.push_back(r);
    }
    return m;
}

// A piece of a global tensor held by this rank.
struct Piece {
    size_t global;   // index into Rank::global
    int64_t begin;   // first element of the global tensor
};

struct Rank {
    Layout layout;
    std::vector<TestBuffer> global;   // the whole set, each tensor once
    std::vector<Kind> kind;           // of each global tensor
    std::vector<TestBuffer> local;    // this rank's pieces, in plan order
    std::vector<TestBuffer> pristine; // their values before any step
    std::vector<Piece> pieces;
    std::vector<gclip_dist_tensor> entries;

    size_t num_groups() const { return layout.two_groups ? 2 : 1; }

    // Give every local tensor its pristine values back (same addresses).
    void restore()
    {
        for (size_t k = 0; k < local.size(); ++k)
            local[k].copy_from(pristine[k]);
    }

    uint64_t checksum() const { return oracle::checksum(local); }
};

inline TestBuffer slice(const TestBuffer &src, int64_t begin, int64_t n, int64_t offset)
{
    TestBuffer b(src.dtype(), n, offset);
    if (n > 0)
        std::memcpy(b.data(),
                    static_cast<const char *>(src.data()) + begin * oracle::dtype_size(src.dtype()),
                    b.bytes());
    return b;
}

// The global set of a seed, each tensor once, and the kind of each tensor.
struct Global {
    std::vector<TestBuffer> tensors;
    std::vector<Kind> kind;
};

inline Global make_global(uint64_t seed)
{
    Global gs;
    oracle::Rng rng(seed);
    auto add = [&](Kind k, gclip_dtype dt, int64_t n, double scale) {
        gs.tensors.emplace_back(dt, n, 0);
        gs.tensors.back().fill(rng, scale);
        gs.kind.push_back(k);
    };
    const int64_t dense_sizes[] = {3, 65537, 1000, 17, 70000, 5, 4096, 1};
    int k = 0;
    for (int64_t n : dense_sizes)
        add(Kind::dense, static_cast<gclip_dtype>(k++ % 4), n, 0.5);
    add(Kind::replicated, GCLIP_F32, 512, 0.25);
    add(Kind::replicated, GCLIP_BF16, 96, 0.25);
    add(Kind::tied, GCLIP_F32, 6000, 0.1);
    const int64_t expert_sizes[] = {5000, 3000, 777, 64};
    for (int64_t n : expert_sizes)
        add(Kind::expert, static_cast<gclip_dtype>(k++ % 4), n, 1.0);
    return gs;
}

// Rank l.rank's pieces of the global set.
inline Rank make_rank(const Global &gs, const Layout &l)
{
    Rank w;
    w.layout = l;
    w.global = gs.tensors;
    w.kind = gs.kind;
    std::vector<uint32_t> groups;
    std::vector<gclip_dist_role> roles;
    auto keep = [&](size_t g, int64_t begin, int64_t n, uint32_t group, gclip_dist_role role) {
        w.local.push_back(slice(w.global[g], begin, n, static_cast<int64_t>(w.local.size() % 3)));
        w.pieces.push_back({g, begin});
        groups.push_back(group);
        roles.push_back(role);
    };
    int expert = 0;
    for (size_t g = 0; g < w.global.size(); ++g) {
        const int64_t n = w.global[g].numel();
        switch (w.kind[g]) {
        case Kind::dense: {
            const int64_t b = n * l.rank / l.size, e = n * (l.rank + 1) / l.size;
            keep(g, b, e - b, 0, GCLIP_DIST_SHARDED);
            break;
        }
        case Kind::replicated:
            keep(g, 0, n, 0, GCLIP_DIST_REPLICATED);
            break;
        case Kind::tied:
            if (l.rank == 0) {
                keep(g, 0, n, 0, GCLIP_DIST_SHARDED);
            } else if (l.rank == l.size - 1) {
                keep(g, 0, n, 0, GCLIP_DIST_NOT_COUNTED);
            }
            break;
        case Kind::expert: {
            const int e = expert++;
            if (l.two_groups ? l.rank % l.ep == e % l.ep : l.rank == e % l.size) {
                keep(g, 0, n, l.two_groups ? 1 : 0, GCLIP_DIST_SHARDED);
            }
            break;
        }
        }
    }
    w.pristine = w.local;
    for (size_t i = 0; i < w.local.size(); ++i)
        w.entries.push_back({w.local[i].tensor(), groups[i], roles[i]});
    return w;
}

inline Rank make_rank(uint64_t seed, const Layout &l)
{
    return make_rank(make_global(seed), l);
}

// This rank's rank in each group and the groups' sizes.
inline void group_coords(const Layout &l, std::vector<int> &ranks, std::vector<int> &sizes)
{
    ranks = {l.rank};
    sizes = {l.size};
    if (l.two_groups) {
        ranks.push_back(l.rank % l.ep);
        sizes.push_back(l.ep);
    }
}

// ---- references ----------------------------------------------------------------

// Long-double norm of the global set, each tensor once (docs/semantics.md).
inline oracle::Norms reference_norm(const Rank &w, double p, double inv_scale)
{
    return oracle::norms(w.global, p, inv_scale);
}

// The norm a single process reports for the global set with `o`.
inline gclip_result single_process_result(const Rank &w, const gclip_norm_options &o)
{
    std::vector<TestBuffer> copy = w.global;
    auto t = oracle::tensors_of(copy);
    gclip_plan *plan = nullptr;
    gclip_result r{};
    if (gclip_plan_create(&plan, t.data(), t.size(), GCLIP_DEVICE_CPU) == GCLIP_STATUS_SUCCESS &&
        gclip_compute_clip_factor(plan, &o, nullptr) == GCLIP_STATUS_SUCCESS)
        gclip_get_result(plan, &r);
    gclip_plan_destroy(plan);
    return r;
}

// Number of elements of the local tensors that differ from pristine * factor
// (each in its own precision: f64 in double, the others in float rounded to
// their type).
inline int64_t misclipped(const Rank &w, float factor)
{
    int64_t bad = 0;
    for (size_t k = 0; k < w.local.size(); ++k) {
        const TestBuffer &a = w.local[k], &p = w.pristine[k];
        for (int64_t i = 0; i < a.numel(); ++i) {
            if (a.dtype() == GCLIP_F64) {
                const double want = oracle::load_f64(p.data(), i) * static_cast<double>(factor);
                bad += oracle::load_f64(a.data(), i) != want;
            } else {
                const float want = oracle::expected_scaled(p.get(i), factor, a.dtype());
                bad += oracle::float_to_bits(a.get(i)) != oracle::float_to_bits(want);
            }
        }
    }
    return bad;
}

// The factor a clipping step applies: the coefficient of the norm it
// reports (oracle::expected_op_coef, written apart from the library) times
// inv_scale. Checked against the result's `scale`, and the elements against
// it, so that a step that reports the wrong factor, or none, fails.
inline float expected_factor(const gclip_result &r, const gclip_norm_options &o)
{
    return oracle::expected_op_coef(r.total_norm, o.max_norm, o.eps) * o.inv_scale;
}

inline uint32_t bits(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

} // namespace distw

#endif // GCLIP_DIST_WORLD_HPP
