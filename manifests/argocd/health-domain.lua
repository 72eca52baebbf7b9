-- Argo CD health check for gpupower.dev/GpuPowerDomain.
--   Healthy:     Ready is True for the current generation.
--   Degraded:    its floors do not fit (Infeasible), what its GPUs hold exceeds its
--                limit (Overcommitted), its nodes are in another chain too
--                (Overlap), or its spec or place in the tree is broken (Ready
--                False with InvalidSpec, ParentNotFound, ParentCycle, ParentInvalid
--                or DuplicateName).
--   Progressing: the operator has not allocated this generation yet, or the
--                allocation is still being applied.
local hs = {}
local generation = (obj.metadata and obj.metadata.generation) or 0
local broken = {
  InvalidSpec = true, ParentNotFound = true, ParentCycle = true, ParentInvalid = true, DuplicateName = true,
}

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
  hs.message = "Waiting for the gpupower operator to allocate this domain"
  return hs
end
if status.observedGeneration == nil or status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the gpupower operator to allocate generation " .. tostring(generation)
  return hs
end

local ready = condition(status, "Ready")
for _, kind in ipairs({"Overcommitted", "Overlap", "Infeasible"}) do
  local c = condition(status, kind)
  if c ~= nil and c.status == "True" then
    hs.status = "Degraded"
    hs.message = c.message or kind
    return hs
  end
end
if ready ~= nil and ready.status == "False" and broken[ready.reason] then
  hs.status = "Degraded"
  hs.message = ready.message or ready.reason
  return hs
end
if ready ~= nil and ready.status == "True"
    and (ready.observedGeneration == nil or ready.observedGeneration >= generation) then
  hs.status = "Healthy"
  hs.message = status.reason or ready.message or "Allocated"
  return hs
end
hs.status = "Progressing"
if ready ~= nil and ready.message ~= nil then
  hs.message = ready.message
else
  hs.message = "Applying the allocation"
end
return hs
