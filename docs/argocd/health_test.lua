-- Runs docs/argocd/health.lua against sample objects: lua5.4 docs/argocd/health_test.lua
local dir = arg[0]:match("(.*/)") or "./"

local function health(o)
  local env = setmetatable({ obj = o }, { __index = _G })
  local f = assert(loadfile(dir .. "health.lua", "t", env))
  return f()
end

local function cond(t, s, reason) return { type = t, status = s, reason = reason, message = "m" } end
local function obj(gen, observed, conds)
  return { metadata = { generation = gen }, status = { observedGeneration = observed, conditions = conds } }
end

local cases = {
  { "no status yet", { metadata = { generation = 1 } }, "Progressing" },
  { "ready", obj(2, 2, { cond("Ready", "True", "Converged"), cond("Reconciling", "False", "Converged"), cond("Stalled", "False", "Converged") }), "Healthy" },
  { "terminal but satisfied", obj(1, 1, { cond("Ready", "True", "TerminalState"), cond("Stalled", "False", "TerminalState") }), "Healthy" },
  { "transitioning", obj(1, 1, { cond("Ready", "False", "Transitioning"), cond("Reconciling", "True", "Transitioning"), cond("Stalled", "False", "Transitioning") }), "Progressing" },
  { "stalled", obj(3, 3, { cond("Ready", "False", "AccessDenied"), cond("Reconciling", "False", "AccessDenied"), cond("Stalled", "True", "AccessDenied") }), "Degraded" },
  { "account errors", obj(1, 1, { cond("Ready", "False", "AccountErrors"), cond("Stalled", "True", "AccountErrors") }), "Degraded" },
  { "stale generation", obj(4, 3, { cond("Ready", "True", "Converged") }), "Progressing" },
  { "paused, as declared", obj(1, 1, { cond("Ready", "True", "ReconcilePaused"), cond("Stalled", "False", "ReconcilePaused"), cond("Paused", "True", "ReconcilePaused") }), "Suspended" },
  { "paused, a call held", obj(2, 2, { cond("Ready", "False", "ReconcilePaused"), cond("Reconciling", "True", "ReconcilePaused"), cond("Paused", "True", "ReconcilePaused") }), "Suspended" },
}
local failed = 0
for _, c in ipairs(cases) do
  local got = health(c[2]).status
  if got ~= c[3] then
    failed = failed + 1
    print("FAIL " .. c[1] .. ": got " .. got .. ", want " .. c[3])
  else
    print("ok   " .. c[1])
  end
end
print(string.format("argocd-health: %d passed, %d failed", #cases - failed, failed))
os.exit(failed == 0 and 0 or 1)
