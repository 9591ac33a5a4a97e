/* labelling.h - the labelling tools' protocols in `tinysam serve`, as functions
 * from a request to a reply (api.c routes to them, server.c's auth/host checks
 * run first):
 *
 *   Label Studio ML backend (ls_backend.c), at the server's root:
 *     GET /health  POST /setup  GET /metrics  POST /webhook  POST /predict
 *   X-AnyLabeling remote server (xany_backend.c):
 *     GET /v1/models  POST /v1/predict
 *
 * Configuration is process-wide (one serve per process):
 * ts_labelling_configure() before the server starts; without it,
 * LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY from the environment and SAM's
 * generator defaults. */
#ifndef TS_SERVER_LABELLING_H
#define TS_SERVER_LABELLING_H

#include "server/api.h"
#include "tinysam.h"

typedef struct {
    const char *label_studio_url;          /* joined to /data/... paths; its origin gets the key */
    const char *label_studio_api_key;      /* "Authorization: Token <key>" to Label
                                              Studio only */
    tinysam_everything_options everything; /* pre-annotation (no prompt in the context) */
    const char *checkpoint_name;           /* X-AnyLabeling's display_name (default: the family) */
    /* X-AnyLabeling's "Token" header, when set (in-process use; under `tinysam serve` the
     * gate checks the serve token in every form, X-AnyLabeling's included) */
    const char *xany_token;
} ts_labelling_config;

/* Defaults: the environment's LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY, SAM's
 * options. */
void ts_labelling_defaults(ts_labelling_config *c);
/* --everything-option NAME=VALUE (SAM's names, e.g. pred_iou_thresh=0.5). */
int ts_labelling_everything_option(ts_labelling_config *c, const char *name_value);
void ts_labelling_configure(const ts_labelling_config *c);

/* The process-wide configuration (defaults until ts_labelling_configure). */
const ts_labelling_config *ts_labelling_config_get(void);

/* X-AnyLabeling's routes (xany_backend.c): the same contract as ts_labelling_handle. */
int ts_xany_handle(ts_server *s, const char *method, const char *url, const char *token_header,
                   const uint8_t *body, size_t len, ts_http_reply *out, int *ret);

/* 1 when url is one of the labelling routes (then *out is filled: 0 returned
 * through *ret), 0 when it is not ours. */
int ts_labelling_handle(ts_server *s, const char *method, const char *url, const uint8_t *body,
                        size_t len, ts_http_reply *out, int *ret);
/* The body limit of a labelling route (0 when not ours or no body; s may be NULL: then
 * non-zero tells a labelling POST route). */
size_t ts_labelling_body_limit(const ts_server *s, const char *url, const char *method);

/* X-AnyLabeling's answer to a request without the right token: 401 in its JSON shape. */
int ts_xany_unauthorized(ts_http_reply *out, int missing);

#endif
