// Runs in the browser: calls the service over gRPC-Web from another origin and publishes what
// happened as window.__results for the test to check.
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { fromBinary, toBinary, create } from "@bufbuild/protobuf";
import { GetReviewMetaRequestSchema, ReviewMetaSchema, ReviewService, Sort } from "./gen/reviews/v1/reviews_pb";

type Outcome = { ok: true; value: unknown } | { ok: false; code: string; message: string; fields: string[] };

async function attempt(call: () => Promise<unknown>): Promise<Outcome> {
  try {
    return { ok: true, value: await call() };
  } catch (e) {
    const err = ConnectError.from(e);
    // google.rpc.BadRequest details arrive in grpc-status-details-bin.
    const fields = err.details
      .filter((d) => "type" in d && d.type === "google.rpc.BadRequest")
      .flatMap((d) => parseFieldNames("value" in d ? d.value : new Uint8Array()));
    return { ok: false, code: Code[err.code], message: err.rawMessage, fields };
  }
}

// BadRequest { repeated FieldViolation field_violations = 1 { string field = 1; ... } }: read the
// field names without generated code for google.rpc.
function parseFieldNames(bytes: Uint8Array): string[] {
  const names: string[] = [];
  const readVarint = (buf: Uint8Array, at: number): [number, number] => {
    let n = 0, shift = 0, i = at;
    for (;;) {
      const b = buf[i++];
      n |= (b & 0x7f) << shift;
      if (b < 0x80) return [n, i];
      shift += 7;
    }
  };
  let i = 0;
  while (i < bytes.length) {
    const [tag, a] = readVarint(bytes, i);
    const [len, b] = readVarint(bytes, a);
    const inner = bytes.subarray(b, b + len);
    i = b + len;
    if (tag !== 0x0a) continue;
    let j = 0;
    while (j < inner.length) {
      const [t, c] = readVarint(inner, j);
      const [l, d] = readVarint(inner, c);
      if (t === 0x0a) names.push(new TextDecoder().decode(inner.subarray(d, d + l)));
      j = d + l;
    }
  }
  return names;
}

// gRPC-Web text mode (base64 frames), which Connect's transport does not speak, by hand.
async function textModeMeta(server: string, productId: number) {
  const message = toBinary(GetReviewMetaRequestSchema, create(GetReviewMetaRequestSchema, { productId }));
  const frame = new Uint8Array(5 + message.length);
  new DataView(frame.buffer).setUint32(1, message.length);
  frame.set(message, 5);
  const response = await fetch(`${server}/reviews.v1.ReviewService/GetReviewMeta`, {
    method: "POST",
    headers: {
      "content-type": "application/grpc-web-text",
      accept: "application/grpc-web-text",
      "x-grpc-web": "1",
    },
    body: btoa(String.fromCharCode(...frame)),
  });
  const text = await response.text();
  // The reply may be several base64 chunks, each padded on its own.
  const bytes = (text.match(/[^=]+=*/g) ?? [])
    .map((chunk) => Uint8Array.from(atob(chunk), (c) => c.charCodeAt(0)))
    .reduce((all, part) => new Uint8Array([...all, ...part]), new Uint8Array());
  const length = new DataView(bytes.buffer).getUint32(1);
  const meta = fromBinary(ReviewMetaSchema, bytes.subarray(5, 5 + length));
  const trailer = new TextDecoder().decode(bytes.subarray(5 + length + 5));
  return {
    contentType: response.headers.get("content-type"),
    fit: meta.characteristics["Fit"]?.value ?? null,
    trailer: trailer.trim(),
  };
}

async function main() {
  const server = new URLSearchParams(location.search).get("server")!;
  const client = createClient(ReviewService, createGrpcWebTransport({ baseUrl: server, useBinaryFormat: true }));

  const list = await client.listReviews({ productId: 2, sort: Sort.NEWEST });
  // The v1 list: 4 and 5 stars only, one review per page, following the cursor to the end.
  const walk: { ids: number[]; totals: number[]; pages: number } = { ids: [], totals: [], pages: 0 };
  let pageToken = "";
  do {
    const page = await client.listProductReviews({
      productId: 2, sort: Sort.NEWEST, rating: [4, 5], pageSize: 1, pageToken,
    });
    walk.ids.push(...page.reviews.map((r) => r.reviewId));
    walk.totals.push(page.totalSize);
    walk.pages += 1;
    pageToken = page.nextPageToken;
  } while (pageToken !== "" && walk.pages < 10);
  const created = await client.createReview({
    productId: 1,
    rating: 5,
    summary: "Posted from a browser",
    body: "Written in headless Chromium and sent over gRPC-Web to the review service.",
    recommend: true,
    name: "browser",
    email: "browser@example.com",
    photos: ["https://images.example.com/browser.jpg"],
    characteristics: { 1: 5, 2: 4, 3: 3, 4: 2 },
  });
  const meta = await client.getReviewMeta({ productId: 1 });
  const after = await client.listReviews({ productId: 1, sort: Sort.NEWEST, count: 1 });
  const notFound = await attempt(() => client.markReviewHelpful({ reviewId: 424242 }));
  const invalid = await attempt(() => client.createReview({ productId: 1, rating: 9 }));
  const badProduct = await attempt(() => client.getReviewMeta({ productId: 0 }));

  (window as unknown as { __results: unknown }).__results = {
    origin: location.origin,
    listed: list.results.map((r) => r.reviewId),
    filteredWalk: walk,
    firstDateMillis: Number(list.results[0].date!.seconds) * 1000 + list.results[0].date!.nanos / 1e6,
    createdId: created.reviewId,
    newestAfterCreate: after.results.map((r) => [r.reviewId, r.summary, r.photos.map((p) => p.url)]),
    ratings: Object.fromEntries(Object.entries(meta.ratings).map(([k, v]) => [k, Number(v)])),
    comfort: meta.characteristics["Comfort"]?.value ?? null,
    notFound,
    invalid,
    badProduct,
    textMode: await textModeMeta(server, 1),
  };
}

main().catch((e) => {
  (window as unknown as { __results: unknown }).__results = { fatal: String(e) };
});
