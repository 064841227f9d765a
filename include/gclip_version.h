/* placeholder until the generated version header lands */
#ifndef GCLIP_VERSION_H
#define GCLIP_VERSION_H
#define GCLIP_VERSION_MAJOR 0
#define GCLIP_VERSION_MINOR 2
#define GCLIP_VERSION_PATCH 0
#define GCLIP_VERSION (GCLIP_VERSION_MAJOR * 10000 + GCLIP_VERSION_MINOR * 100 + GCLIP_VERSION_PATCH)
#endif
