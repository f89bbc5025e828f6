// Validates deploy/k8s offline: every object of every kustomization (base, components, overlays) against
// the Kubernetes API schemas (kubernetes-models; KEDA and Prometheus Operator CRDs from their
// @kubernetes-models packages), unknown fields included, then checks that the manifests agree with the
// server: ConfigMap keys are real flags, probes and Services point at the ports the server listens on
// (its --help defaults with the ConfigMap's overrides), the drain covers the queue wait plus the
// longest answer and the grace period covers preStop plus the drain, Guaranteed QoS, a hash-suffixed
// ConfigMap, bounded emptyDirs, a PodDisruptionBudget that suits the replica count (and an HA overlay
// with 2+ replicas spread over nodes), KEDA on utilisation.
//
//   node validate_k8s.mjs --k8s DIR --server-bin BIN --health-header server/vqa_server.h
// Renders with `kubectl kustomize` when kubectl is on PATH, else with its own small kustomize (the
// features deploy/k8s uses: resources, components, configMapGenerator, replicas, strategic-merge
// patches, namespace, images); with kubectl it checks that both renderings agree.
import crypto from "node:crypto";
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

// A strategic-merge patch as deploy/k8s uses them: maps merge, null deletes, lists are replaced.
function mergePatch(target, patch) {
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete target[key];
    else if (typeof value === "object" && !Array.isArray(value) && typeof target[key] === "object" &&
             target[key] !== null && !Array.isArray(target[key])) mergePatch(target[key], value);
    else target[key] = structuredClone(value);
  }
}

function readEnvFile(file) {
  const data = {};
  for (const line of fs.readFileSync(file, "utf8").split("\n")) {
    const m = line.match(/^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$/);
    if (m) data[m[1]] = m[2];
  }
  return data;
}

function renderSelf(dir) {
  const k = readYamlDocs(path.join(dir, "kustomization.yaml"))[0];
  let docs = [];
  for (const entry of [...(k.resources || []), ...(k.components || [])]) {
    const p = path.join(dir, entry);
    docs = docs.concat(fs.statSync(p).isDirectory() ? renderSelf(p) : readYamlDocs(p));
  }
  for (const generator of k.configMapGenerator || []) {
    const data = {};
    for (const env of generator.envs || []) Object.assign(data, readEnvFile(path.join(dir, env)));
    // A content hash as kustomize's (not its exact digest): the name changes with the data.
    const hash = crypto.createHash("sha256").update(JSON.stringify(data)).digest("hex").slice(0, 10);
    const name = `${generator.name}-${hash}`;
    docs.push({ apiVersion: "v1", kind: "ConfigMap",
                metadata: { name, labels: { ...(generator.options?.labels || {}) } }, data });
    for (const d of docs.filter((x) => x.kind === "Deployment")) {
      for (const c of d.spec.template.spec.containers) {
        for (const e of c.envFrom || []) if (e.configMapRef?.name === generator.name) e.configMapRef.name = name;
      }
    }
  }
  for (const patch of k.patches || []) {
    for (const p of readYamlDocs(path.join(dir, patch.path))) {
      const target = docs.find((d) => d.kind === p.kind && d.metadata.name === p.metadata.name);
      if (!target) throw new Error(`${dir}: patch ${patch.path} matches no ${p.kind}/${p.metadata.name}`);
      mergePatch(target, p);
    }
  }
  for (const r of k.replicas || []) {
    docs.filter((d) => d.kind === "Deployment" && d.metadata.name === r.name).forEach((d) => { d.spec.replicas = r.count; });
  }
  if (k.namespace) docs.forEach((d) => { d.metadata.namespace = k.namespace; });
  for (const image of k.images || []) {
    for (const d of docs.filter((x) => x.kind === "Deployment")) {
      for (const c of d.spec.template.spec.containers) {
        if (c.image.split(":")[0] === image.name) c.image = `${image.newName || image.name}:${image.newTag || "latest"}`;
      }
    }
  }
  return docs;
}

// Both renderings with the generated names' hashes blanked, keyed by kind/name, keys sorted.
function canonical(docs) {
  const sortKeys = (v) => (Array.isArray(v) ? v.map(sortKeys) : v && typeof v === "object"
    ? Object.fromEntries(Object.keys(v).sort().map((key) => [key, sortKeys(v[key])])) : v);
  const blank = (t) => t.replace(/(flexvqa-config)-[a-z0-9]{10}/g, "$1-HASH");
  const text = (d) => blank(JSON.stringify(sortKeys(d)));
  return Object.fromEntries(docs.map((d) => [blank(`${d.kind}/${d.metadata.name}`), text(d)]));
}

function render(dir) {
  try {
    const out = execFileSync("kubectl", ["kustomize", dir], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    const docs = YAML.parseAllDocuments(out).map((d) => d.toJS()).filter(Boolean);
    const [theirs, ours] = [canonical(docs), canonical(renderSelf(dir))];
    const differ = [...new Set([...Object.keys(theirs), ...Object.keys(ours)])].filter((key) => theirs[key] !== ours[key]);
    check(differ.length === 0, `${path.relative(args.k8s, dir)}: the built-in rendering equals kubectl kustomize's` +
          (differ.length ? ` (differ: ${differ.join(", ")})` : ""));
    return { docs, how: "kubectl kustomize" };
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
  // The drain must let a request accepted just before SIGTERM wait its whole queue wait and then give
  // the longest answer: max_new_tokens decode steps of up to DECODE_STEP_S on a loaded GPU after a
  // first token of up to FIRST_TOKEN_S (gpu.md: TTFT 30-600 ms, 5-90 ms a step; margins on top).
  const DECODE_STEP_S = 0.09;
  const FIRST_TOKEN_S = 8;
  const queueWaitS = Number(setting("FLEXVQA_MAX_QUEUE_WAIT_MS")) / 1000;
  const longestAnswerS = Number(setting("FLEXVQA_MAX_NEW_TOKENS")) * DECODE_STEP_S + FIRST_TOKEN_S;
  check(drainS >= queueWaitS + longestAnswerS,
        `${tag}: the drain (${drainS} s) covers the queue wait (${queueWaitS} s) plus the longest answer ` +
        `(${longestAnswerS.toFixed(1)} s)`);
  check(/^flexvqa-config-[a-z0-9]{10}$/.test(configMap.metadata.name),
        `${tag}: the ConfigMap (${configMap.metadata.name}) has a content-hash suffix, so edits roll the pods`);
  for (const c of [...(pod.spec.initContainers || []), ...pod.spec.containers]) {
    const { requests = {}, limits = {} } = c.resources || {};
    const same = ["cpu", "memory"].every((r) => requests[r] !== undefined && String(requests[r]) === String(limits[r]));
    check(same, `${tag}: container ${c.name} has requests == limits for cpu and memory (Guaranteed QoS)`);
  }
  for (const v of (pod.spec.volumes || []).filter((x) => "emptyDir" in x)) {
    check(v.emptyDir?.sizeLimit !== undefined, `${tag}: emptyDir ${v.name} has a sizeLimit`);
  }
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
  // Replicas: the Deployment's, or KEDA's floor when it drives them.
  const scaled = byKind("ScaledObject")[0];
  const replicas = Math.max(deployment.spec.replicas ?? 1, scaled?.spec.minReplicaCount ?? 0);
  const pdbs = byKind("PodDisruptionBudget");
  check(pdbs.length === 1, `${tag}: one PodDisruptionBudget`);
  for (const pdb of pdbs) {
    check(selects(pdb.spec.selector.matchLabels), `${tag}: the PodDisruptionBudget selects the server pods`);
    const { minAvailable, maxUnavailable } = pdb.spec;
    if (replicas < 2) {
      // Evicting the only replica is an outage: evictions must wait for a second one.
      check(maxUnavailable === 0 || minAvailable >= 1,
            `${tag}: one replica: the PodDisruptionBudget refuses to evict it (maxUnavailable ${maxUnavailable}, minAvailable ${minAvailable})`);
    } else {
      check(minAvailable === 1 && maxUnavailable === undefined,
            `${tag}: ${replicas} replicas: the PodDisruptionBudget keeps one serving (minAvailable 1)`);
      const spread = pod.spec.topologySpreadConstraints || [];
      check(spread.some((t) => t.topologyKey === "kubernetes.io/hostname" && t.whenUnsatisfiable === "DoNotSchedule" &&
                        selects(t.labelSelector?.matchLabels)),
            `${tag}: ${replicas} replicas are spread over nodes (topologySpreadConstraints on kubernetes.io/hostname)`);
    }
  }
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
      const query = trigger.metadata.query;
      check(trigger.type === "prometheus" && ["flexvqa_requests_running", "flexvqa_requests_waiting",
        "flexvqa_max_running_requests"].every((m) => query.includes(m)),
            `${tag}: ScaledObject scales on utilisation ((running + waiting) / capacity)`);
      check(trigger.metadata.ignoreNullValues === "false",
            `${tag}: ScaledObject: an empty query result is an error (ignoreNullValues "false"), not a 0`);
    }
  }
}

const flags = serverFlags(args["server-bin"]);
check(Object.keys(flags).length > 10, `read ${Object.keys(flags).length} flags from ${args["server-bin"]} --help`);
const healthName = fs.readFileSync(args["health-header"], "utf8").match(/kHealthServiceName\[\] = "([^"]+)"/)[1];
const roots = kustomizationRoots(args.k8s);
check(roots.length >= 3, `found kustomizations: ${roots.map((r) => path.relative(args.k8s, r)).join(", ")}`);
let highAvailability = false;
for (const root of roots) {
  const { docs, how } = render(root);
  console.log(`-- ${path.relative(args.k8s, root)}: ${docs.length} objects (${how})`);
  for (const doc of docs) await validateObject(doc, path.relative(args.k8s, root));
  checkConsistency(docs, root, flags, healthName);
  highAvailability ||= (docs.find((d) => d.kind === "Deployment")?.spec.replicas ?? 1) >= 2;
}
check(highAvailability, "an overlay runs 2+ replicas (overlays/ha)");
// The PrometheusRule carries exactly the rules file's groups.
const ruleFile = path.join(args.k8s, "..", "prometheus", "flexvqa-alerts.yml");
const manifest = readYamlDocs(path.join(args.k8s, "components", "prometheusrule", "prometheusrule.yaml"))[0];
check(JSON.stringify(manifest.spec.groups) === JSON.stringify(readYamlDocs(ruleFile)[0].groups),
      "the PrometheusRule's groups are deploy/prometheus/flexvqa-alerts.yml's");
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
