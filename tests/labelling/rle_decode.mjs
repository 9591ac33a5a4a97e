// rle_decode.mjs - the independent side of the Label Studio brush RLE tests: decodes byte
// lists with @thi.ng/rle-pack's decode (what Label Studio's front end runs on a brush
// result's "rle").
// stdin: one JSON list of byte values per line; stdout per line: "N v0 v1 ..." (the values)
// or, with --summary W H, "N ones" where ones counts pixels whose 4 RGBA values are all 255
// followed by a 0/1 string of the pixel mask (values checked to be 0 or 255, RGBA equal).
import { decode } from "@thi.ng/rle-pack";
import { createInterface } from "node:readline";

const summary = process.argv[2] === "--summary";
const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of rl) {
    if (!line.trim()) continue;
    const bytes = Uint8Array.from(JSON.parse(line));
    const v = decode(bytes);
    if (!summary) {
        console.log(`${v.length} ${Array.from(v).join(" ")}`);
        continue;
    }
    let bits = "", bad = 0;
    for (let i = 0; i + 3 < v.length; i += 4) {
        const p = v[i];
        if ((p !== 0 && p !== 255) || v[i + 1] !== p || v[i + 2] !== p || v[i + 3] !== p) bad++;
        bits += p ? "1" : "0";
    }
    console.log(`${v.length} ${bad} ${bits}`);
}
