/* fetch.h - HTTP(S) GET of an image for the labelling backends (libcurl): Label
 * Studio hands the ML backend URLs, not bytes. */
#ifndef TS_SERVER_FETCH_H
#define TS_SERVER_FETCH_H

#include <stddef.h>
#include <stdint.h>

/* GETs url (http or https only, no redirects to other schemes, 30 s at most);
 * token, when not NULL, goes as "Authorization: Token <token>". Fails with a
 * clear message on an unreachable host, an HTTP status other than 200, or a
 * body over max_bytes. */
int ts_fetch_url(const char *url, const char *token, size_t max_bytes, uint8_t **data, size_t *len);

/* 1 when a and b have the same scheme, host and port (default ports filled in),
 * so that a Label Studio API key is only ever sent to Label Studio. */
int ts_same_origin(const char *a, const char *b);

#endif
