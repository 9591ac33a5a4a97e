/* web_assets.h - the page's files, embedded at build time from web/ (embed_web.sh). */
#ifndef TS_SERVER_WEB_ASSETS_H
#define TS_SERVER_WEB_ASSETS_H

#include <stddef.h>

typedef struct {
    const char *name; /* file name in web/, e.g. "app.js" */
    const unsigned char *data;
    size_t size;
} ts_web_asset;

extern const ts_web_asset ts_web_assets[];
extern const int ts_web_n_assets;

#endif
