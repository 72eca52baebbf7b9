-- Argo CD health check for gpupower.dev/GpuPowerBudget.
--   Healthy:     Ready is True for the current generation.
--   Degraded:    the budget is infeasible, a target cannot be resolved, the
--                spec is invalid, no cap fits the nodes' GPUs (CapRangeEmpty),
--                or another budget owns some of its pods.
--   Progressing: the operator has not planned this generation yet, or the
--                plan is still being applied.
local hs = {}
local generation = (obj.metadata and obj.metadata.generation) or 0

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the gpupower operator to plan this budget"
  return hs
end
if status.observedGeneration == nil or status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the gpupower operator to plan generation " .. tostring(generation)
  return hs
end

local ready = condition(status, "Ready")
local infeasible = condition(status, "Infeasible")
local resolved = condition(status, "TargetsResolved")
local conflict = condition(status, "Conflict")

if infeasible ~= nil and infeasible.status == "True" then
  hs.status = "Degraded"
  hs.message = infeasible.message or "The budget is below the floor of its targets"
  return hs
end
if resolved ~= nil and resolved.status == "False" then
  hs.status = "Degraded"
  hs.message = resolved.message or "A target cannot be resolved"
  return hs
end
-- Reasons the operator cannot get past by itself: a person must change the spec or the nodes.
local stuck = {InvalidSpec = true, PlanFailed = true, CapRangeEmpty = true}
if ready ~= nil and ready.status == "False" and stuck[ready.reason] then
  hs.status = "Degraded"
  hs.message = ready.message or ready.reason
  return hs
end
if conflict ~= nil and conflict.status == "True" then
  hs.status = "Degraded"
  hs.message = conflict.message or "Another budget owns some of this budget's pods"
  return hs
end
if ready ~= nil and ready.status == "True"
    and (ready.observedGeneration == nil or ready.observedGeneration >= generation) then
  hs.status = "Healthy"
  hs.message = status.reason or ready.message or "Planned"
  return hs
end
hs.status = "Progressing"
if ready ~= nil and ready.message ~= nil then
  hs.message = ready.message
else
  hs.message = "Applying the plan"
end
return hs
