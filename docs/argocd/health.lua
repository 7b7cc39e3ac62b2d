-- Argo CD health check for MacieJob and MacieDiscovery (macie.kubeops.dev), reading the
-- kstatus-style conditions: Paused=True (the macie.kubeops.dev/paused annotation) is Suspended,
-- Ready=True is Healthy, Stalled=True is Degraded, anything else (Reconciling, or a status not
-- yet written for this generation) is Progressing.
local hs = { status = "Progressing", message = "Waiting for macie-operator" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Paused" and c.status == "True" then
    return { status = "Suspended", message = (c.reason or "") .. ": " .. (c.message or "") }
  end
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "Waiting for macie-operator to observe generation " .. tostring(generation)
  return hs
end
for _, c in ipairs(obj.status.conditions) do
  local text = (c.reason or "") .. ": " .. (c.message or "")
  if c.type == "Stalled" and c.status == "True" then
    return { status = "Degraded", message = text }
  end
  if c.type == "Ready" and c.status == "True" then
    return { status = "Healthy", message = text }
  end
  if c.type == "Reconciling" and c.status == "True" then
    hs.message = text
  end
end
return hs
