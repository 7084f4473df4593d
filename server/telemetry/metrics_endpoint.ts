/**
 * `GET /metrics` in the Prometheus text format, on its own port (METRICS_PORT), from the
 * OpenTelemetry Prometheus exporter. The exporter's own server cannot take port 0 (it reads 0 as
 * "unset" and listens on 9464), so the endpoint is a node:http server of ours that hands the
 * exporter each scrape.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { Meter } from "@opentelemetry/api";
import { PrometheusExporter } from "@opentelemetry/exporter-prometheus";
import { metrics as sdkMetrics } from "@opentelemetry/sdk-node";

export interface MetricsEndpoint {
  /** Where to scrape: this meter's instruments are what it serves. */
  readonly meter: Meter;
  /** Starts listening; resolves with the bound address (port 0 picks a free one). */
  listen(): Promise<{ host: string; port: number }>;
  close(): Promise<void>;
}

export function createMetricsEndpoint(opts: { host: string; port: number }): MetricsEndpoint {
  // Scope labels would repeat on every series; target_info is the collector's business.
  const exporter = new PrometheusExporter({
    preventServerStart: true,
    withoutScopeInfo: true,
    withoutTargetInfo: true,
  });
  const provider = new sdkMetrics.MeterProvider({ readers: [exporter] });
  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://localhost").pathname;
    if (req.method === "GET" && path === "/metrics") {
      exporter.getMetricsRequestHandler(req, res);
      return;
    }
    res.statusCode = 404;
    res.end("not found: metrics are at GET /metrics\n");
  });
  return {
    meter: provider.getMeter("promptlearning"),
    listen: () =>
      new Promise((resolve, reject) => {
        server.once("error", (e) =>
          reject(
            new Error(
              `--metrics-port (METRICS_PORT) ${opts.port}: cannot listen on ${opts.host}: ${e.message}`,
            ),
          ));
        server.listen(opts.port, opts.host, () => {
          const a = server.address() as AddressInfo;
          resolve({ host: a.address, port: a.port });
        });
      }),
    async close() {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await provider.shutdown();
    },
  };
}
