/**
 * k8s/monitoring, rendered by `kubectl kustomize`: the ServiceMonitor scrapes the port and path
 * the base's headless metrics Service offers, and the Grafana dashboard ships as the ConfigMap
 * the dashboard sidecar loads. (test/metrics_test.ts checks the dashboard's metric names against
 * a live scrape.)
 */
import { ConfigMap } from "kubernetes-models/v1";
import type { Service } from "kubernetes-models/v1";
import { parseAllDocuments } from "yaml";
import { assert, assertEquals } from "./assert.ts";
import { kubectlTool, kustomize } from "./support/kustomize.ts";

const k8s = new URL("../k8s/", import.meta.url);
const tool = kubectlTool("k8s_monitoring_test.ts");

type Obj = Record<string, unknown> & {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
};

async function render(dir: string): Promise<Obj[]> {
  const text = await kustomize(new URL(dir, k8s).pathname);
  return parseAllDocuments(text).map((d) => d.toJS() as Obj).filter((o) => o);
}

interface ServiceMonitor {
  spec: {
    selector: { matchLabels: Record<string, string> };
    endpoints: { port: string; path?: string; interval?: string }[];
  };
}

interface Panel {
  type: string;
  title: string;
  targets?: { expr: string }[];
}

Deno.test({
  name: "k8s/monitoring: the ServiceMonitor scrapes the metrics Service of every overlay",
  ignore: tool.ignore,
  async fn() {
    tool.check();
    const objs = await render("monitoring/");
    const monitors = objs.filter((o) =>
      o.apiVersion === "monitoring.coreos.com/v1" && o.kind === "ServiceMonitor"
    );
    assertEquals(monitors.length, 1);
    const { spec } = monitors[0] as unknown as ServiceMonitor;
    assertEquals(spec.endpoints.length, 1);
    assertEquals(spec.endpoints[0].path, "/metrics");
    for (const overlay of [".", "overlays/postgres/", "overlays/no-auth/", "overlays/gpu/"]) {
      const services = (await render(overlay)).filter((o) => o.kind === "Service") as
        & Obj[]
        & Service[];
      const picked = services.filter((s) =>
        Object.entries(spec.selector.matchLabels).every(([k, v]) => s.metadata.labels?.[k] === v)
      );
      assertEquals(
        picked.map((s) => s.metadata.name),
        ["promptlearning-metrics"],
        `${overlay}: the ServiceMonitor selects the metrics Service alone`,
      );
      const ports = (picked[0] as unknown as Service).spec!.ports!.map((p) => p.name);
      assert(ports.includes(spec.endpoints[0].port), `${overlay}: its port is named ${ports}`);
    }
  },
});

Deno.test({
  name:
    "k8s/monitoring: the Grafana dashboard ships as a sidecar-labelled ConfigMap with every view",
  ignore: tool.ignore,
  async fn() {
    tool.check();
    const objs = await render("monitoring/");
    const cm = objs.find((o) => o.kind === "ConfigMap") as unknown as ConfigMap;
    new ConfigMap(cm).validate();
    assertEquals(cm.metadata!.labels!.grafana_dashboard, "1");
    const file = await Deno.readTextFile(new URL("monitoring/promptlearning-dashboard.json", k8s));
    assertEquals(cm.data!["promptlearning-dashboard.json"], file);
    const dash = JSON.parse(file) as { uid: string; panels: Panel[] };
    assertEquals(dash.uid, "promptlearning");
    const rows = dash.panels.filter((p) => p.type === "row").map((p) => p.title);
    for (const view of ["Throughput", "Latency", "Queue", "slots", "jobs"]) {
      assert(
        rows.some((r) => r.toLowerCase().includes(view.toLowerCase())),
        `a ${view} row: ${rows}`,
      );
    }
    const graphs = dash.panels.filter((p) => p.type !== "row");
    for (const p of graphs) assert(p.targets?.length && p.targets.every((t) => t.expr), p.title);
    const exprs = graphs.flatMap((p) => p.targets!.map((t) => t.expr)).join("\n");
    assert(exprs.includes("histogram_quantile(0.99"), "latency percentiles");
  },
});
