# Varnish in front of the service's JSON edge: a shared cache that is never stale. The service
# answers every GET with a strong ETag and `Cache-Control: no-cache, stale-if-error=<s>`;
# Varnish keeps each answer but asks the service again for every request (a conditional GET,
# `If-None-Match`, answered `304` with no body while nothing changed), so a write through any
# replica shows in the very next read through Varnish. While the service is down (its readiness
# probe failing), Varnish serves the last answer for up to stale-if-error seconds.
#
# Point `.host`/`.port` at the service (a Kubernetes Service name, or 127.0.0.1:50051 beside
# `reviews dev`), then: varnishd -a :6081 -f reviews.vcl -s malloc,256m
vcl 4.1;

import std;

backend reviews {
    .host = "127.0.0.1";
    .port = "50051";
    .probe = {
        .url = "/readyz";
        .interval = 1s;
        .timeout = 500ms;
        .window = 3;
        .threshold = 2;
    }
}

sub vcl_recv {
    if (req.method != "GET" && req.method != "HEAD") {
        return (pass);
    }
    if (std.healthy(req.backend_hint)) {
        # While the service can be asked, no stored answer is fresh: each request revalidates.
        set req.ttl = 0s;
        set req.grace = 0s;
    }
    return (hash);
}

sub vcl_backend_response {
    if (beresp.http.Cache-Control ~ "(?i)no-cache" && beresp.http.ETag) {
        # Stored, but never fresh (req.ttl is 0 in vcl_recv; a TTL of 0 would keep Varnish
        # from storing it at all, and within its 1 µs a request is fetched whole, not served):
        # each request revalidates it with If-None-Match. Kept an hour for the revalidation,
        # and stale-if-error seconds as grace, which only a request while the service is sick
        # may use (vcl_recv).
        set beresp.ttl = 0.001ms;
        set beresp.grace = std.duration(
            regsub(beresp.http.Cache-Control, "^.*stale-if-error=([0-9]+).*$", "\1s"), 0s);
        set beresp.keep = 1h;
        return (deliver);
    }
}
