// The summary fold port (src/summary.ts): every case of tests/storage/golden/summary_fold.jsonl,
// which tests/storage/test_summary_fold.py checks against the Agent SDK's own fold.

import { describe, expect, it } from "vitest";
import { foldSummary, isoToEpochMs, type SummaryData } from "../src/summary";

const files = import.meta.glob("../../tests/storage/golden/summary_fold.jsonl", { query: "?raw", import: "default", eager: true }) as Record<string, string>;
type Case = { case: string; batches: Array<Array<{ [key: string]: unknown }>>; data: SummaryData };
const cases = Object.values(files)[0]
  .split("\n")
  .filter((line) => line.trim() !== "")
  .map((line) => JSON.parse(line) as Case & { note?: string })
  .filter((c) => c.note === undefined);

describe("summary fold", () => {
  it("finds the golden cases", () => {
    expect(cases.length).toBeGreaterThan(15);
  });

  for (const c of cases) {
    it(c.case, () => {
      let data: SummaryData | null = null;
      for (const batch of c.batches) data = foldSummary(data, batch);
      expect(data).toEqual(c.data);
    });
  }

  it("reads no timestamp from things that are none", () => {
    for (const ts of [null, 5, "", "2024", "2024-13-01", "2024-01-01T00:60:00Z", "0000-01-01T00:00:00Z", "2024-01-01T00:00:00+24:00"]) {
      expect(isoToEpochMs(ts)).toBeNull();
    }
  });
});
