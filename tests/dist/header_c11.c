/* gclip_dist.h must compile as strict C11 (-pedantic -Werror) with the
 * declarations of every transport this build has; the C++ test compares the
 * layout C sees with its own. */
#include "gclip_dist.h"

#include <stddef.h>

size_t gclip_dist_header_c11_layout(size_t *offset_group, size_t *offset_role);

size_t gclip_dist_header_c11_layout(size_t *offset_group, size_t *offset_role)
{
    *offset_group = offsetof(gclip_dist_tensor, group);
    *offset_role = offsetof(gclip_dist_tensor, role);
    return sizeof(gclip_dist_tensor);
}
