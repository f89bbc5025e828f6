// Validates deploy/k8s offline: every object of every kustomization (base, components, overlays) against
// the Kubernetes API schemas (kubernetes-models; KEDA and Prometheus Operator CRDs from their
// @kubernetes-models packages), unknown fields included, then checks that the manifests agree with the
// server: ConfigMap keys are real flags, probes and Services point at the ports the server listens on
// (its --help defaults with the ConfigMap's overrides), the grace period covers preStop plus the drain.
//
//   node validate_k8s.mjs --k8s DIR --server-bin BIN --health-header server/vqa_server.h
// Renders with `kubectl kustomize` when kubectl is on PATH, else resolves resources/components itself.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";

let YAML;
try {
  YAML = (await import("yaml")).default;
  await import("kubernetes-models/apps/v1");
} catch (e) {
  console.log(`FAIL the npm packages are missing (${e.message}): run deploy/install_test_deps.sh`);
  process.exit(1);
}

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith("--") ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []));
let failures = 0;
let checks = 0;
function check(ok, what) {
  checks++;
  if (!ok) failures++;
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
}

// ---- Schema lookup: apiVersion -> module with one class per kind. ----
const MODULES = {
  "v1": "kubernetes-models/v1",
  "apps/v1": "kubernetes-models/apps/v1",
  "policy/v1": "kubernetes-models/policy/v1",
  "autoscaling/v2": "kubernetes-models/autoscaling/v2",
  "keda.sh/v1alpha1": "@kubernetes-models/keda/keda.sh/v1alpha1",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
};

// ---- Unknown fields: the JSON schemas accept them, so walk the objects along the models' .d.ts. ----
const dtsCache = new Map();
function parseDts(file) {
  if (dtsCache.has(file)) return dtsCache.get(file);
  const text = fs.readFileSync(file, "utf8");
  const imports = {};
  for (const m of text.matchAll(/import \{ ([^}]+) \} from "([^"]+)";/g)) {
    for (const name of m[1].split(",").map((s) => s.trim())) imports[name] = m[2];
  }
  // The first exported interface's top-level properties: name -> type text (inline objects: null).
  const props = {};
  const start = text.search(/export interface \w+/);
  if (start >= 0) {
    let depth = 0;
    for (const line of text.slice(start).split("\n")) {
      const opens = (line.match(/\{/g) || []).length;
      const closes = (line.match(/\}/g) || []).length;
      if (depth === 1) {
        const m = line.match(/^\s*"([^"]+)"\??: (.*?);?\s*$/);
        if (m) props[m[1]] = opens > closes ? null : m[2];
      }
      depth += opens - closes;
      if (depth === 0 && opens + closes > 0) break;
    }
  }
  const parsed = { imports, props, file };
  dtsCache.set(file, parsed);
  return parsed;
}

function resolveDts(specifier, fromFile) {
  try {
    const url = specifier.startsWith(".")
      ? new URL(specifier, "file://" + fromFile).pathname
      : new URL(import.meta.resolve(specifier)).pathname;
    const dts = url.replace(/\.js$/, "") + ".d.ts";
    return fs.existsSync(dts) ? dts : null;
  } catch {
    return null;
  }
}

function strictWalk(value, dtsFile, where, errors) {
  if (!dtsFile || value === null || typeof value !== "object" || Array.isArray(value)) return;
  const { imports, props, file } = parseDts(dtsFile);
  if (Object.keys(props).length === 0) return;  // A map or an alias: nothing to hold keys against.
  for (const [key, child] of Object.entries(value)) {
    if (!(key in props)) {
      errors.push(`${where}.${key}: unknown field (known: ${Object.keys(props).join(", ")})`);
      continue;
    }
    const type = props[key];
    if (!type) continue;
    const ref = type.match(/^(?:Array<)?(I\w+)>?$/);
    if (!ref || !imports[ref[1]]) continue;
    const childFile = resolveDts(imports[ref[1]], file);
    if (Array.isArray(child)) child.forEach((c, i) => strictWalk(c, childFile, `${where}.${key}[${i}]`, errors));
    else strictWalk(child, childFile, `${where}.${key}`, errors);
  }
}

async function validateObject(doc, source) {
  const name = `${source}: ${doc.kind}/${doc.metadata?.name}`;
  const moduleName = MODULES[doc.apiVersion];
  if (!moduleName) return check(false, `${name}: no schema known for apiVersion ${doc.apiVersion}`);
  const module = await import(moduleName);
  const Model = module[doc.kind];
  if (!Model) return check(false, `${name}: ${doc.apiVersion} has no kind ${doc.kind}`);
  try {
    new Model(doc).validate();
  } catch (e) {
    return check(false, `${name}: ${e.message}`);
  }
  const errors = [];
  const kindFile = new URL(import.meta.resolve(`${moduleName}/${doc.kind}`)).pathname.replace(/\.js$/, ".d.ts");
  strictWalk(doc, kindFile, doc.kind, errors);
  check(errors.length === 0, `${name} validates against the ${doc.apiVersion} schema` +
    (errors.length ? ": " + errors.join("; ") : ""));
}

// ---- Rendering. ----
function readYamlDocs(file) {
  return YAML.parseAllDocuments(fs.readFileSync(file, "utf8")).map((d) => d.toJS()).filter(Boolean);
}

function renderSelf(dir) {
  const k = readYamlDocs(path.join(dir, "kustomization.yaml"))[0];
  let docs = [];
  for (const entry of [...(k.resources || []), ...(k.components || [])]) {
    const p = path.join(dir, entry);
    docs = docs.concat(fs.statSync(p).isDirectory() ? renderSelf(p) : readYamlDocs(p));
  }
  if (k.namespace) docs.forEach((d) => { d.metadata.namespace = k.namespace; });
  return docs;
}

function render(dir) {
  try {
    const out = execFileSync("kubectl", ["kustomize", dir], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    return { docs: YAML.parseAllDocuments(out).map((d) => d.toJS()).filter(Boolean), how: "kubectl kustomize" };
  } catch (e) {
    if (e.code !== "ENOENT") throw new Error(`kubectl kustomize ${dir}: ${e.stderr || e.message}`);
    return { docs: renderSelf(dir), how: "resources and components" };
  }
}

function kustomizationRoots(dir) {
  const roots = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (!entry.isDirectory()) continue;
    if (fs.existsSync(path.join(p, "kustomization.yaml"))) {
      const k = readYamlDocs(path.join(p, "kustomization.yaml"))[0];
      if (k.kind !== "Component") roots.push(p);  // Components are rendered inside overlays.
    }
    roots.push(...kustomizationRoots(p));
  }
  return roots;
}

// ---- The server's flags and defaults, from --help: "--name=default\n help [env FLEXVQA_NAME]". ----
function serverFlags(bin) {
  const help = execFileSync(bin, ["--help"], { encoding: "utf8" });
  const flags = {};
  for (const m of help.matchAll(/--(\w+)=(\S*)\n[^\n]*\[env (\w+)\]/g)) flags[m[3]] = { name: m[1], default: m[2] };
  return flags;
}

function portOf(address) {
  const m = String(address).match(/:(\d+)$/);
  return m ? Number(m[1]) : NaN;
}

// ---- Agreement with the server. ----
function checkConsistency(docs, root, flags, healthName) {
  const byKind = (kind) => docs.filter((d) => d.kind === kind);
  const deployment = byKind("Deployment")[0];
  const configMap = byKind("ConfigMap")[0];
  const tag = path.relative(args.k8s, root) || ".";
  const env = { ...(configMap?.data || {}) };
  for (const key of Object.keys(env)) check(key in flags, `${tag}: ConfigMap key ${key} is a server flag`);
  const setting = (envName) => env[envName] ?? flags[envName]?.default;
  const grpcPort = portOf(setting("FLEXVQA_LISTEN_ADDRESS"));
  const metricsPort = portOf(setting("FLEXVQA_METRICS_LISTEN_ADDRESS"));
  check(grpcPort > 0, `${tag}: the server listens for gRPC on port ${grpcPort}`);
  check(metricsPort > 0, `${tag}: the server serves metrics on port ${metricsPort}`);
  // Probes and Services come from outside the pod's loopback.
  for (const envName of ["FLEXVQA_LISTEN_ADDRESS", "FLEXVQA_METRICS_LISTEN_ADDRESS"]) {
    const host = String(setting(envName)).replace(/:\d+$/, "");
    check(["0.0.0.0", "[::]", ""].includes(host), `${tag}: ${envName} (${setting(envName)}) listens on all interfaces`);
  }

  const pod = deployment.spec.template;
  const container = pod.spec.containers[0];
  const usesConfig = (container.envFrom || []).some((e) => e.configMapRef?.name === configMap.metadata.name);
  check(usesConfig, `${tag}: the container takes its flags from ConfigMap ${configMap.metadata.name}`);
  const ports = Object.fromEntries((container.ports || []).map((p) => [p.name, p.containerPort]));
  const resolve = (port) => (typeof port === "number" ? port : ports[port]);
  check(ports.grpc === grpcPort, `${tag}: container port grpc (${ports.grpc}) is the gRPC port ${grpcPort}`);
  check(ports.metrics === metricsPort, `${tag}: container port metrics (${ports.metrics}) is the metrics port ${metricsPort}`);
  for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
    const p = container[probe];
    check(p?.grpc && resolve(p.grpc.port) === grpcPort, `${tag}: ${probe} is a gRPC health probe on port ${grpcPort}`);
    if (p?.grpc?.service) {
      check(p.grpc.service === healthName, `${tag}: ${probe} asks for service ${p.grpc.service}, which the server registers`);
    }
  }
  const startup = container.startupProbe;
  check(startup.periodSeconds * startup.failureThreshold >= 300,
        `${tag}: startupProbe allows ${startup.periodSeconds * startup.failureThreshold} s (>= 300 s) to load the model`);
  const drainS = Number(setting("FLEXVQA_DRAIN_MS")) / 1000;
  const preStop = container.lifecycle?.preStop;
  const preStopS = preStop?.sleep?.seconds ?? Number(preStop?.exec?.command?.at(-1) ?? 0);
  const grace = pod.spec.terminationGracePeriodSeconds ?? 30;
  check(grace >= preStopS + drainS + 2,
        `${tag}: terminationGracePeriodSeconds ${grace} >= preStop ${preStopS} s + drain ${drainS} s + 2 s gRPC shutdown`);
  check(grace <= preStopS + drainS + 15, `${tag}: terminationGracePeriodSeconds ${grace} is sized to the drain, not far above it`);
  const liveness = container.livenessProbe;
  check(liveness.periodSeconds * liveness.failureThreshold > drainS,
        `${tag}: liveness tolerates NOT_SERVING for longer than the drain`);
  check(container.resources?.limits?.["nvidia.com/gpu"] !== undefined, `${tag}: the container has an nvidia.com/gpu limit`);
  check((pod.spec.volumes || []).some((v) => v.name === "models") &&
        (container.volumeMounts || []).some((m) => m.name === "models" &&
          String(setting("FLEXVQA_MODEL_DIR")).startsWith(m.mountPath + "/")),
        `${tag}: FLEXVQA_MODEL_DIR lies on the models volume`);
  const annotations = pod.metadata.annotations || {};
  check(Number(annotations["prometheus.io/port"]) === metricsPort, `${tag}: prometheus.io/port is the metrics port`);

  const podLabels = pod.metadata.labels;
  const selects = (selector) => Object.entries(selector || {}).every(([k, v]) => podLabels[k] === v);
  check(selects(deployment.spec.selector.matchLabels), `${tag}: the Deployment's selector matches its pods`);
  for (const service of byKind("Service")) {
    check(selects(service.spec.selector), `${tag}: Service ${service.metadata.name} selects the server pods`);
    for (const p of service.spec.ports) {
      const target = resolve(p.targetPort ?? p.port);
      check(target === grpcPort || target === metricsPort,
            `${tag}: Service ${service.metadata.name} port ${p.name} targets a port the server listens on (${target})`);
    }
  }
  for (const pdb of byKind("PodDisruptionBudget")) check(selects(pdb.spec.selector.matchLabels), `${tag}: the PodDisruptionBudget selects the server pods`);
  for (const monitor of byKind("ServiceMonitor")) {
    const service = byKind("Service").find((s) => Object.entries(monitor.spec.selector.matchLabels)
      .every(([k, v]) => s.metadata.labels?.[k] === v));
    check(service !== undefined, `${tag}: ServiceMonitor ${monitor.metadata.name} selects a Service`);
    for (const endpoint of monitor.spec.endpoints) {
      const port = service?.spec.ports.find((p) => p.name === endpoint.port);
      check(port && resolve(port.targetPort) === metricsPort, `${tag}: ServiceMonitor scrapes the metrics port through ${endpoint.port}`);
    }
  }
  for (const scaled of byKind("ScaledObject")) {
    check(scaled.spec.scaleTargetRef.name === deployment.metadata.name, `${tag}: ScaledObject scales the Deployment`);
    for (const trigger of scaled.spec.triggers) {
      check(trigger.type === "prometheus" && /flexvqa_requests_waiting/.test(trigger.metadata.query),
            `${tag}: ScaledObject scales on the queue metric`);
    }
  }
}

const flags = serverFlags(args["server-bin"]);
check(Object.keys(flags).length > 10, `read ${Object.keys(flags).length} flags from ${args["server-bin"]} --help`);
const healthName = fs.readFileSync(args["health-header"], "utf8").match(/kHealthServiceName\[\] = "([^"]+)"/)[1];
const roots = kustomizationRoots(args.k8s);
check(roots.length >= 2, `found kustomizations: ${roots.map((r) => path.relative(args.k8s, r)).join(", ")}`);
for (const root of roots) {
  const { docs, how } = render(root);
  console.log(`-- ${path.relative(args.k8s, root)}: ${docs.length} objects (${how})`);
  for (const doc of docs) await validateObject(doc, path.relative(args.k8s, root));
  checkConsistency(docs, root, flags, healthName);
}
// A broken manifest must fail: the validator is not a no-op.
const broken = structuredClone(renderSelf(roots[0]).find((d) => d.kind === "Deployment"));
broken.spec.template.spec.containers[0].readinessProbe.grpc.prot = 50051;
const errors = [];
strictWalk(broken, new URL(import.meta.resolve("kubernetes-models/apps/v1/Deployment")).pathname.replace(/\.js$/, ".d.ts"), "Deployment", errors);
check(errors.length === 1, "a misspelt probe field is caught");
broken.spec.template.spec.containers[0].ports[0].containerPort = "50051";
let rejected = false;
try {
  const { Deployment } = await import("kubernetes-models/apps/v1");
  new Deployment(broken).validate();
} catch {
  rejected = true;
}
check(rejected, "a string container port is rejected by the schema");

console.log(`${checks - failures} passed, ${failures} failed`);
process.exit(failures ? 1 : 0);
