/* Clips [3, 4] to norm 2.5 through an installed gclip; exits 0 on the right
 * answer from a library of the installed headers' version. */
#include <math.h>
#include <stdio.h>

#include <gclip.h>

int main(void)
{
    float g[2] = {3.0f, 4.0f};
    gclip_tensor t = {g, 2, GCLIP_F32};
    gclip_plan *plan;
    gclip_norm_options opt = GCLIP_NORM_OPTIONS_INIT;
    gclip_result r;
    opt.max_norm = 2.5f;
    opt.eps = 0.0f;
    if (gclip_plan_create(&plan, &t, 1, GCLIP_DEVICE_CPU) != GCLIP_STATUS_SUCCESS ||
        gclip_clip_grad_norm(plan, &opt, NULL) != GCLIP_STATUS_SUCCESS ||
        gclip_get_result(plan, &r) != GCLIP_STATUS_SUCCESS) {
        fprintf(stderr, "gclip failed: %s\n", gclip_last_error());
        return 1;
    }
    gclip_plan_destroy(plan);
    int ok = r.total_norm == 5.0f && g[0] == 1.5f && g[1] == 2.0f;
    printf("norm %g -> [%g, %g]: %s\n", (double)r.total_norm, (double)g[0], (double)g[1],
           ok ? "ok" : "WRONG");
    if (gclip_get_version() != GCLIP_VERSION) {
        printf("library version %d, headers %d\n", gclip_get_version(), GCLIP_VERSION);
        ok = 0;
    }
    return ok ? 0 : 1;
}
