// fold_reference.hpp - the documented order of gclip_norm_finalize's fold of
// an array of partials, written apart from the library (include/gclip.h,
// docs/semantics.md "Partials"): leaf i of 1024 folds partials
// [n*i/1024, n*(i+1)/1024) left to right, group g folds leaves
// 32g ... 32g+31 in order, the total folds the 32 groups in order, each from
// 0; a sum of acc for the finite norm types, a NaN-keeping max for p = Inf.
// Foreign fingerprints are not handled here: the tests that use this fold
// arrays of one fingerprint.
#ifndef GCLIP_TESTS_FOLD_REFERENCE_HPP
#define GCLIP_TESTS_FOLD_REFERENCE_HPP

#include "gclip.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace foldref {

struct Fold {
    double acc = 0.0;
    uint64_t nonfinite = 0;
};

inline double combine(double a, double b, bool max)
{
    if (!max)
        return a + b;
    return (std::isnan(b) || b > a) ? b : a;
}

// The fold of partials [0, n) of `v` in the documented shape.
inline Fold shape_fold(const gclip_partial *v, std::size_t n, bool max)
{
    Fold total;
    for (std::size_t g = 0; g < 32; ++g) {
        double group = 0.0;
        for (std::size_t l = 32 * g; l < 32 * g + 32; ++l) {
            double leaf = 0.0;
            for (std::size_t i = n * l / 1024; i < n * (l + 1) / 1024; ++i) {
                leaf = combine(leaf, v[i].acc, max);
                total.nonfinite += v[i].nonfinite;
            }
            group = combine(group, leaf, max);
        }
        total.acc = combine(total.acc, group, max);
    }
    return total;
}

inline Fold shape_fold(const std::vector<gclip_partial> &v, bool max)
{
    return shape_fold(v.data(), v.size(), max);
}

// The left fold in index order, from 0: what the shape must differ from in
// some bits above 32 partials for a test to tell the two apart.
inline double left_fold(const std::vector<gclip_partial> &v, bool max)
{
    double a = 0.0;
    for (const gclip_partial &x : v)
        a = combine(a, x.acc, max);
    return a;
}

} // namespace foldref

#endif
